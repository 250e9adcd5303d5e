"""The CPU LIF kernel: ``lif_cpu.c`` compiled at first use and called through ``ctypes``.

The C file includes no PyTorch headers, so building it takes about a second (a ``cpp_extension`` build
takes a minute); the shared library is cached under ``$SPIKFORMER_CACHE_DIR`` (default
``~/.cache/spikformer``), keyed by the source, the compiler, its flags and the CPU. Where no C compiler is
found, or ``SPIKFORMER_NO_CPU_KERNEL=1`` is set, :func:`available` is false and the LIF layers use the
pure-PyTorch ``fused`` backend instead; nothing else changes.

It is compiled for the CPU it runs on (``-march=native``). ``SPIKFORMER_CPU_ARCH`` names another ``-march``
target: ``x86-64-v3`` builds the AVX2 code an AVX2-only machine runs (without AVX-512 the attention kernel is
off, :func:`spike_attention_vectorised`), so that path can be tested and measured on an AVX-512 machine, and a
library built for the oldest CPU of a cluster runs on all of them (such a build's cache key leaves out the
CPU). A target with instructions this CPU lacks is refused (a warning, then ``fused``), never loaded.

Both entry points take and return ``[T, ...]`` tensors. ``ctypes`` releases the GIL during the call.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import warnings
from importlib import resources
from pathlib import Path

import torch

from . import as_time_major_dense, like_layout

_SOURCE = "lif_cpu.c"
HEADER = "spikformer_kernels.h"  # the exported functions' prototypes: the ctypes signatures come from it
# -ffp-contract=off: no fused multiply-adds, so results round exactly as PyTorch's; -fno-trapping-math lets
# conditional selects vectorise (it changes no value, only the assumption that FP exceptions are unobserved).
_CFLAGS = ("-O3", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math", "-fPIC", "-shared", "-pthread")
_ARCH_ENV = "SPIKFORMER_CPU_ARCH"
_DTYPE_CODES = {torch.float32: 0, torch.float64: 1, torch.bfloat16: 2, torch.float16: 3}


def cache_dir() -> Path:
    root = os.environ.get("SPIKFORMER_CACHE_DIR")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "spikformer"


def _cpu_fingerprint() -> str:
    # -march=native code must not be reused on a different CPU (a shared home directory on a cluster).
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            lines = [line for line in f if line.startswith(("model name", "flags"))][:2]
        return "".join(lines)
    except OSError:
        return platform.processor() + platform.machine()


def cpu_model_name() -> str:
    """The CPU's model name as ``/proc/cpuinfo`` gives it (else what ``platform`` knows): for reports."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    """The CPU's feature flags as /proc/cpuinfo lists them (empty where there is none)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


# What a -march target may use (the compiler's predefined macros) and the /proc/cpuinfo flag the CPU must
# have for it: a library built for more than the CPU has would stop the process at an illegal instruction.
_ISA_MACRO_FLAGS = {
    "__AVX__": "avx", "__AVX2__": "avx2", "__FMA__": "fma", "__F16C__": "f16c", "__BMI__": "bmi1",
    "__BMI2__": "bmi2", "__AVX512F__": "avx512f", "__AVX512BW__": "avx512bw", "__AVX512DQ__": "avx512dq",
    "__AVX512VL__": "avx512vl", "__AVX512CD__": "avx512cd", "__AVX512BF16__": "avx512_bf16",
    "__AVX512VNNI__": "avx512_vnni", "__AVX512FP16__": "avx512_fp16", "__AVX512VBMI__": "avx512vbmi",
    "__AVX512VBMI2__": "avx512_vbmi2", "__AVXVNNI__": "avx_vnni",
}


def _check_arch_runs_here(compiler: str, arch: str) -> None:
    """Refuse a ``-march`` whose instructions this CPU lacks (x86 Linux; elsewhere the user's word)."""
    flags = cpu_flags()
    if arch == "native" or not flags or platform.machine() not in ("x86_64", "AMD64"):
        return
    macros = subprocess.run([compiler, f"-march={arch}", "-dM", "-E", "-x", "c", os.devnull], capture_output=True,
                            text=True, timeout=60)
    if macros.returncode != 0:
        raise RuntimeError(f"{compiler} failed:\n{macros.stderr.strip()}")
    defined = {line.split()[1] for line in macros.stdout.splitlines() if line.startswith("#define ")}
    missing = sorted(flag for macro, flag in _ISA_MACRO_FLAGS.items() if macro in defined and flag not in flags)
    if missing:
        raise RuntimeError(f"{_ARCH_ENV}={arch} uses instructions this CPU lacks ({', '.join(missing)}): "
                           "the process would stop at an illegal instruction; unset it, or name an older target")


def target_arch() -> str:
    """The ``-march`` the kernel is built for: ``$SPIKFORMER_CPU_ARCH``, or ``native``."""
    arch = os.environ.get(_ARCH_ENV, "").strip() or "native"
    if not all(c.isalnum() or c in "-_." for c in arch):
        raise ValueError(f"{_ARCH_ENV}={arch!r} is not a -march name (such as native, x86-64-v3 or "
                         "skylake-avx512); unset it to build for this CPU")
    return arch


def _cflags() -> tuple[str, ...]:
    return (*_CFLAGS, f"-march={target_arch()}")


def _compiler() -> str | None:
    return shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc") or shutil.which("clang")


def _build(source: str, compiler: str, header: str = "") -> Path:
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
    flags = _cflags()
    # Only a native build depends on the CPU it is built on; one for a named target is the same everywhere.
    host = _cpu_fingerprint() if target_arch() == "native" else ""
    key = hashlib.sha256("\0".join([source, header, compiler, version, *flags, host]).encode())
    target = cache_dir() / f"lif_cpu_{key.hexdigest()[:16]}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        src = Path(tmp) / _SOURCE
        src.write_text(source)
        (Path(tmp) / HEADER).write_text(header)
        out = Path(tmp) / target.name
        result = subprocess.run([compiler, *flags, str(src), "-o", str(out)], capture_output=True,
                                text=True, timeout=300)
        if result.returncode != 0:
            raise RuntimeError(f"{compiler} failed:\n{result.stderr.strip()}")
        os.replace(out, target)  # atomic: concurrent builders never see a partial file
    return target


_C_TYPES = {"int": ctypes.c_int, "int64_t": ctypes.c_int64, "double": ctypes.c_double, "float": ctypes.c_float}


def header_signatures(header: str) -> dict[str, list[type]]:
    """The ctypes argument types of every ``int name(...);`` prototype in the header's text (pointers of any
    type are ``c_void_p``; ``(void)`` is no argument)."""
    signatures = {}
    for name, params in re.findall(r"^int (\w+)\(([^)]*)\);", header, re.M):
        argtypes = []
        for param in " ".join(params.split()).split(","):
            param = param.strip()
            if param == "void":
                continue
            if "*" in param:
                argtypes.append(ctypes.c_void_p)
            else:
                argtypes.append(_C_TYPES[param.rsplit(" ", 1)[0].removeprefix("const ")])
        signatures[name] = argtypes
    return signatures


# Why the library is missing, or where it was loaded from: what build_status() reports.
_BUILD: dict[str, str | None] = {}


def build_status() -> dict[str, str | bool | None]:
    """Whether the CPU kernels are built (building them now if needed): ``built``, the ``-march`` ``target``,
    the ``library`` file in the cache, and the ``reason`` when they are not (``spikformer doctor`` shows it)."""
    built = _library() is not None
    try:
        target = target_arch()
    except ValueError as error:
        target = str(error)
    return {"built": built, "target": target, "cache": str(cache_dir()), "library": _BUILD.get("library"),
            "reason": _BUILD.get("reason")}


@functools.cache
def _library() -> ctypes.CDLL | None:
    if os.environ.get("SPIKFORMER_NO_CPU_KERNEL", "") not in ("", "0"):
        _BUILD["reason"] = "SPIKFORMER_NO_CPU_KERNEL is set"
        return None
    if not sys.platform.startswith("linux"):
        _BUILD["reason"] = f"the CPU kernels are built on Linux only (this is {sys.platform})"
        return None
    compiler = _compiler()
    if compiler is None:
        _BUILD["reason"] = "no C compiler found ($CC, cc, gcc or clang)"
        return None
    try:
        source = resources.files(__package__).joinpath(_SOURCE).read_text()
        header = resources.files(__package__).joinpath(HEADER).read_text()
        _check_arch_runs_here(compiler, target_arch())
        path = _build(source, compiler, header)
        lib = ctypes.CDLL(str(path))
    except (OSError, RuntimeError, ValueError, subprocess.SubprocessError) as err:
        _BUILD["reason"] = str(err)
        warnings.warn(f"spikformer: the CPU LIF kernel could not be built ({err}); using the pure-PyTorch "
                      "'fused' backend", RuntimeWarning, stacklevel=3)
        return None
    _BUILD["library"] = str(path)
    for name, argtypes in header_signatures(header).items():
        function = getattr(lib, name)
        function.argtypes, function.restype = argtypes, ctypes.c_int
    return lib


def available(dtype: torch.dtype | None = None) -> bool:
    """Whether the kernel is built (building it now if needed) and, if given, supports ``dtype``."""
    lib = _library()
    if lib is None:
        return False
    return dtype is None or (dtype in _DTYPE_CODES and bool(lib.lif_supports(_DTYPE_CODES[dtype])))


def _check(status: int, dtype: torch.dtype) -> None:
    if status == -1:
        raise TypeError(f"the CPU LIF kernel does not support {dtype}")
    if status != 0:
        raise MemoryError("the CPU LIF kernel could not allocate its work buffer")


def lif_forward(x: torch.Tensor, tau: float, v_threshold: float, v_reset: float) -> torch.Tensor:
    """Spikes of ``x [T, ...]`` (same dtype and shape)."""
    lib = _library()
    assert lib is not None and x.device.type == "cpu"
    x = as_time_major_dense(x)
    spikes = torch.empty_like(x)
    T = x.shape[0]
    M = x.numel() // T if T else 0
    if x.numel():
        _check(lib.lif_forward(_DTYPE_CODES[x.dtype], x.data_ptr(), spikes.data_ptr(), T, M, tau,
                               v_threshold, v_reset, torch.get_num_threads()), x.dtype)
    return spikes


def lif_backward(x: torch.Tensor, grad_spikes: torch.Tensor, tau: float, v_threshold: float, v_reset: float,
                 alpha: float, detach_reset: bool) -> torch.Tensor:
    """Gradient of the input from the input ``x`` and the spikes' gradient (``H`` is recomputed)."""
    lib = _library()
    assert lib is not None and x.device.type == "cpu"
    x = as_time_major_dense(x)
    grad_spikes = like_layout(grad_spikes, x)
    grad_x = torch.empty_like(x)
    T = x.shape[0]
    M = x.numel() // T if T else 0
    if x.numel():
        _check(lib.lif_backward(_DTYPE_CODES[x.dtype], x.data_ptr(), grad_spikes.data_ptr(), grad_x.data_ptr(),
                                T, M, tau, v_threshold, v_reset, alpha, int(detach_reset),
                                torch.get_num_threads()), x.dtype)
    return grad_x


# --- BatchNorm (as scale and shift per channel) followed by LIF ---------------------------------------


def bn_layout(y: torch.Tensor, steps: int) -> tuple[torch.Tensor, int, int, int, bool]:
    """``(y, R, L, C, channels_last)``: ``y`` (``[T*M, D]`` tokens or ``[T*B, C, H, W]`` images) seen as
    ``T`` steps of ``R`` rows of ``L`` elements; ``y`` is copied only if neither layout fits."""
    if y.ndim == 2:
        y = y.contiguous()
        return y, y.shape[0] // steps, y.shape[1], y.shape[1], True
    C = y.shape[1]
    spatial = y[0, 0].numel()
    if y.ndim == 4 and not y.is_contiguous() and y.is_contiguous(memory_format=torch.channels_last):
        return y, y.shape[0] // steps * spatial, C, C, True
    y = y.contiguous()
    return y, y.shape[0] // steps * C, spatial, C, False


def _lib_and_code(y: torch.Tensor):
    lib = _library()
    assert lib is not None and y.device.type == "cpu"
    return lib, _DTYPE_CODES[y.dtype]


def bn_lif_forward(y: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, steps: int, tau: float,
                   v_threshold: float, v_reset: float) -> torch.Tensor:
    """Spikes of ``LIF(y * scale + shift)`` (per-channel ``scale``/``shift`` in the compute dtype)."""
    lib, code = _lib_and_code(y)
    y, R, L, C, cl = bn_layout(y, steps)
    spikes = torch.empty_like(y)
    scale, shift = scale.contiguous(), shift.contiguous()
    if y.numel():
        _check(lib.bn_lif_forward(code, y.data_ptr(), spikes.data_ptr(), scale.data_ptr(), shift.data_ptr(),
                                  steps, R, L, C, int(cl), tau, v_threshold, v_reset, torch.get_num_threads()),
               y.dtype)
    return spikes


def bn_lif_backward(y: torch.Tensor, grad_spikes: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor,
                    mean: torch.Tensor, steps: int, tau: float, v_threshold: float, v_reset: float, alpha: float,
                    detach_reset: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(grad_z, sum(grad_z), sum(grad_z * (y - mean)))``, the sums per channel in float64."""
    lib, code = _lib_and_code(y)
    y, R, L, C, cl = bn_layout(y, steps)
    grad_spikes = like_layout(grad_spikes, y)
    grad_z = torch.empty_like(y)
    sums = torch.zeros(2, C, dtype=torch.float64)
    scale, shift, mean = scale.contiguous(), shift.contiguous(), mean.contiguous()
    if y.numel():
        _check(lib.bn_lif_backward(code, y.data_ptr(), grad_spikes.data_ptr(), grad_z.data_ptr(), scale.data_ptr(),
                                   shift.data_ptr(), mean.data_ptr(), sums.data_ptr(), steps, R, L, C, int(cl),
                                   tau, v_threshold, v_reset, alpha, int(detach_reset), torch.get_num_threads()),
               y.dtype)
    return grad_z, sums[0], sums[1]


def bn_grad_input(grad_z: torch.Tensor, y: torch.Tensor, a: torch.Tensor, k1: torch.Tensor, k0: torch.Tensor,
                  steps: int) -> torch.Tensor:
    """``grad_z * a + (y * k1 + k0)`` per channel, in place on ``grad_z`` (laid out like ``y``)."""
    lib, code = _lib_and_code(y)
    y, R, L, C, cl = bn_layout(y, steps)
    grad_z = like_layout(grad_z, y)
    a, k1, k0 = a.contiguous(), k1.contiguous(), k0.contiguous()
    if y.numel():
        _check(lib.bn_grad_input(code, grad_z.data_ptr(), y.data_ptr(), a.data_ptr(), k1.data_ptr(), k0.data_ptr(),
                                 steps, R, L, C, int(cl), torch.get_num_threads()), y.dtype)
    return grad_z


def bn_stats(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and biased variance of ``y`` (``[M, D]`` tokens or ``[N, C, H, W]`` images, either
    memory layout), accumulated in float64 and returned in float64."""
    lib, code = _lib_and_code(y)
    y, R, L, C, cl = bn_layout(y, 1)
    mean = torch.zeros(C, dtype=torch.float64)
    var = torch.zeros(C, dtype=torch.float64)
    if y.numel():
        _check(lib.bn_stats(code, y.data_ptr(), mean.data_ptr(), var.data_ptr(), R, L, C, int(cl),
                            torch.get_num_threads()), y.dtype)
    return mean, var


# --- 1-bit spike storage (see spikformer.kernels.packing) ------------------------------------------------


def pack_spikes(flat: torch.Tensor) -> torch.Tensor | None:
    """One bit per element of a 1-D tensor of 0/1 values (uint8, ``ceil(n / 8)`` bytes), or None as soon as an
    element is neither 0 nor 1 (then usually after reading a few bytes)."""
    lib, code = _lib_and_code(flat)
    bits = torch.empty((flat.numel() + 7) // 8, dtype=torch.uint8)
    status = lib.spikes_pack(code, flat.data_ptr(), bits.data_ptr(), flat.numel())
    if status < 0:
        raise TypeError(f"the CPU kernel cannot pack {flat.dtype}")
    return bits if status == 0 else None


def unpack_spikes(bits: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Fill the 1-D tensor ``out`` with the 0/1 values ``pack_spikes`` stored in ``bits``; returns ``out``."""
    lib, code = _lib_and_code(out)
    if lib.spikes_unpack(code, bits.data_ptr(), out.data_ptr(), out.numel()) != 0:
        raise TypeError(f"the CPU kernel cannot unpack {out.dtype}")
    return out


# --- max-pooling of channels-last maps ---------------------------------------------------------------------


def max_pool_applies(x: torch.Tensor, kernel: list[int]) -> bool:
    """Whether :func:`max_pool_forward` takes ``x``: a float32 or bfloat16 ``[N, C, H, W]`` CPU tensor in
    channels-last memory order, pooled over at most 255 places."""
    return (x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16) and x.ndim == 4
            and kernel[0] * kernel[1] <= 255 and x.is_contiguous(memory_format=torch.channels_last)
            and available(x.dtype))


def _pool_geometry(shape: torch.Size, kernel: list[int], stride: list[int], padding: list[int]) -> tuple[int, ...]:
    N, C, H, W = shape
    OH = (H + 2 * padding[0] - kernel[0]) // stride[0] + 1
    OW = (W + 2 * padding[1] - kernel[1]) // stride[1] + 1
    return N, H, W, C, OH, OW, *kernel, *stride, *padding


def max_pool_forward(x: torch.Tensor, kernel: list[int], stride: list[int], padding: list[int],
                     with_places: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``max_pool2d(x, kernel, stride, padding)`` (no dilation, floor mode) of an ``x`` that
    :func:`max_pool_applies` to, channels-last too, and with ``with_places`` each maximum's place in its
    window (uint8, one per output element: what :func:`max_pool_backward` needs instead of int64 indices)."""
    lib, code = _lib_and_code(x)
    geometry = _pool_geometry(x.shape, kernel, stride, padding)
    N, _, _, C, OH, OW = geometry[:6]
    out = torch.empty((N, C, OH, OW), dtype=x.dtype, memory_format=torch.channels_last)
    places = torch.empty((N, OH, OW, C), dtype=torch.uint8) if with_places else None
    if out.numel():
        _check(lib.max_pool_forward(code, x.data_ptr(), out.data_ptr(), None if places is None else places.data_ptr(),
                                    *geometry, torch.get_num_threads()), x.dtype)
    return out, places


def max_pool_backward(places: torch.Tensor, grad_out: torch.Tensor, shape: torch.Size, kernel: list[int],
                      stride: list[int], padding: list[int]) -> torch.Tensor:
    """The gradient of :func:`max_pool_forward`'s input (``shape``, channels-last) from the places it wrote and
    the output's gradient: PyTorch's max-pool gradient bit for bit."""
    lib, code = _lib_and_code(grad_out)
    grad_out = grad_out.contiguous(memory_format=torch.channels_last)
    grad_in = torch.empty(shape, dtype=grad_out.dtype, memory_format=torch.channels_last)
    if grad_in.numel():
        _check(lib.max_pool_backward(code, places.data_ptr(), grad_out.data_ptr(), grad_in.data_ptr(),
                                     *_pool_geometry(shape, kernel, stride, padding), torch.get_num_threads()),
               grad_out.dtype)
    return grad_in


# --- spiking self-attention products ---------------------------------------------------------------------


def spike_attention_vectorised() -> bool:
    """Whether the attention kernel was built with its AVX-512 paths. Without them (an AVX2-only CPU) its
    scalar search for a spike row's nonzeros makes it slower than PyTorch's products, so it is not used."""
    lib = _library()
    return lib is not None and bool(lib.spike_attention_vectorised())


def spike_attention_applies(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether :func:`spike_attention_forward` takes ``q``, ``k``, ``v`` and is worth it: contiguous CPU tensors
    of one shape ``[..., N, D]`` and dtype (float32 or bfloat16), on a CPU with AVX-512."""
    return (q.device.type == "cpu" and q.dtype in (torch.float32, torch.bfloat16) and q.ndim >= 2
            and all(t.dtype == q.dtype and t.shape == q.shape and t.device == q.device and t.is_contiguous()
                    for t in (q, k, v))
            and available(q.dtype) and spike_attention_vectorised())


def _attention_sizes(q: torch.Tensor) -> tuple[int, int, int]:
    N, D = q.shape[-2:]
    return q.numel() // (N * D) if N * D else 0, N, D


def spike_attention_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int,
                            scale: float) -> torch.Tensor:
    """``scale * Q (K^T V)`` per head of ``D / num_heads`` channels, for 0/1 tensors ``[..., N, D]`` that
    :func:`spike_attention_applies` to: float32, of their shape (heads side by side, as in the input)."""
    lib, code = _lib_and_code(q)
    out = torch.empty(q.shape, dtype=torch.float32)
    S, N, D = _attention_sizes(q)
    if out.numel():
        _check(lib.spike_attention_forward(code, q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(), S, N, D,
                                           num_heads, scale, torch.get_num_threads()), q.dtype)
    return out


def spike_attention_backward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grad: torch.Tensor, num_heads: int,
                             scale: float, needs: tuple[bool, bool, bool]) -> list[torch.Tensor | None]:
    """The gradients of ``q``, ``k``, ``v`` (those ``needs`` asks for, else None) from the gradient of
    :func:`spike_attention_forward`'s output."""
    lib, code = _lib_and_code(q)
    grad = grad.to(torch.float32).contiguous()
    grads = [torch.empty_like(q) if need else None for need in needs]
    S, N, D = _attention_sizes(q)
    if q.numel() and any(needs):
        _check(lib.spike_attention_backward(code, q.data_ptr(), k.data_ptr(), v.data_ptr(), grad.data_ptr(),
                                            *[None if t is None else t.data_ptr() for t in grads], S, N, D, num_heads,
                                            scale, torch.get_num_threads()), q.dtype)
    return grads
