"""The numerics of the multi-step Leaky Integrate-and-Fire neuron: the oracle and its fast backends.

Time is the first dimension of every input: ``x`` is ``[T, ...]`` with any trailing shape. The neuron
follows the template charge -> fire -> reset (docs/neurons.md, SpikingJelly's ``MultiStepLIFNode(tau=2.0,
detach_reset=True)``):

    H[t] = V[t-1] + (X[t] - (V[t-1] - V_reset)) / tau
    S[t] = Heaviside(H[t] - V_th)
    V[t] = H[t] * (1 - S[t]) + V_reset * S[t]

Every forward call starts from rest (``V[-1] = V_reset``), so no manual state reset is ever needed.

Backends compute the same function (``lif_backends()`` lists them):

- ``"torch"``: the plain autograd loop, the oracle every other backend is tested against;
- ``"fused"``: pure PyTorch, always available: the time loop runs without autograd and the backward pass is
  computed analytically from the saved ``H`` (one tensor saved instead of several per step);
- ``"c"``: a small C kernel for CPU tensors (``spikformer/kernels/lif_cpu.c``), built at first use; one pass
  over memory forward, one backward, saving only the input;
- ``"triton"``: a Triton kernel for CUDA tensors (``spikformer/kernels/triton_lif.py``).

``"auto"`` picks per call from the tensor's device and dtype: ``"c"`` on CPU, ``"triton"`` on CUDA, and
``"fused"`` where those are unavailable. The ``c`` and ``triton`` backends are ``torch.library`` custom ops,
so ``torch.compile`` sees one opaque op per LIF layer and no graph break. Spikes of every backend are
bit-identical to the oracle's (for finite inputs).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..fast.kernels import as_time_major_dense
from ..registry import Registry
from .surrogate import sigmoid_surrogate_grad, spike


@dataclass(frozen=True)
class LIFParams:
    """The constants of one LIF layer."""

    tau: float = 2.0
    v_threshold: float = 1.0
    v_reset: float = 0.0
    detach_reset: bool = True
    surrogate_alpha: float = 4.0

    def __post_init__(self) -> None:
        if not self.tau > 1.0:
            # tau <= 1 makes the leak factor (1 - 1/tau) non-positive: the neuron no longer integrates.
            raise ValueError(f"LIF tau must be > 1 (got {self.tau}); the papers use tau=2.0")
        if not self.surrogate_alpha > 0:
            raise ValueError(f"surrogate_alpha must be > 0 (got {self.surrogate_alpha})")


# --- the oracle -----------------------------------------------------------------------------------


# bfloat16 and float16 inputs are computed in float32 by every backend: the membrane potential would lose
# all but 8 (or 11) bits otherwise, and the kernels read and write half precision without a float32 copy.
# So the spikes of a half-precision input are those of its float32 copy, bit for bit.
HALF_DTYPES = (torch.bfloat16, torch.float16)


def lif_reference(
    x: torch.Tensor, params: LIFParams = LIFParams(), return_membrane: bool = False
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The oracle: a per-step autograd loop. Optionally also returns ``V`` after reset, ``[T, ...]``."""
    # Half-precision inputs charge a float32 membrane; spikes come back in x's dtype.
    if x.dtype in HALF_DTYPES:
        out = lif_reference(x.float(), params, return_membrane)
        return (out[0].to(x.dtype), out[1]) if return_membrane else out.to(x.dtype)
    v = torch.full_like(x[0], params.v_reset)
    spikes, membranes = [], []
    for t in range(x.shape[0]):
        h = v + (x[t] - (v - params.v_reset)) / params.tau
        s = spike(h - params.v_threshold, params.surrogate_alpha)
        s_reset = s.detach() if params.detach_reset else s
        v = h * (1.0 - s_reset) + params.v_reset * s_reset
        spikes.append(s)
        membranes.append(v)
    out = torch.stack(spikes)
    return (out, torch.stack(membranes)) if return_membrane else out


# --- pure PyTorch kernels (the "fused" backend and every fallback) --------------------------------


def torch_lif_forward(x: torch.Tensor, p: LIFParams, keep_h: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Spikes of ``x [T, ...]`` and, if ``keep_h``, the pre-reset potentials ``H`` (no autograd)."""
    spikes = torch.empty_like(x)
    x = x.float() if x.dtype in HALF_DTYPES else x  # a float32 membrane, as the oracle
    h_all = torch.empty_like(x) if keep_h else None
    v = torch.full_like(x[0], p.v_reset)
    for t in range(x.shape[0]):
        # The reference's operations in the reference's order, so that spikes agree bit for bit.
        h = v + (x[t] - (v - p.v_reset)) / p.tau
        fired = h >= p.v_threshold
        spikes[t] = fired
        if h_all is not None:
            h_all[t] = h
        v = h.masked_fill_(fired, p.v_reset)  # = h * (1 - S) + V_reset * S for finite h
    return spikes, h_all


def torch_lif_backward(h_all: torch.Tensor, grad_spikes: torch.Tensor, p: LIFParams) -> torch.Tensor:
    """Gradient of the input from ``H`` and the spikes' gradient, in the reference's autograd order."""
    sg = sigmoid_surrogate_grad(h_all - p.v_threshold, p.surrogate_alpha)
    dv_dh = (h_all < p.v_threshold).to(h_all.dtype)  # d V / d H through the (detached) reset
    if not p.detach_reset:
        dv_dh = dv_dh + (p.v_reset - h_all) * sg
    grad_x = torch.empty_like(h_all)
    grad_v = None
    for t in range(h_all.shape[0] - 1, -1, -1):
        grad_h = grad_spikes[t] * sg[t]
        if grad_v is not None:
            grad_h = grad_h + grad_v * dv_dh[t]
        grad_x[t] = grad_h / p.tau
        grad_v = grad_h - grad_x[t]  # d H[t+1] / d V[t] = 1 - 1/tau
    return grad_x


class _FusedLIF(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, params: LIFParams) -> torch.Tensor:  # type: ignore[override]
        spikes, h_all = torch_lif_forward(x, params, keep_h=x.requires_grad)
        if h_all is not None:
            ctx.save_for_backward(h_all)
        ctx.params = params
        return spikes

    @staticmethod
    def backward(ctx, grad_spikes: torch.Tensor):  # type: ignore[override]
        (h_all,) = ctx.saved_tensors
        return torch_lif_backward(h_all, grad_spikes, ctx.params).to(grad_spikes.dtype), None


# --- the C kernel as a custom op ------------------------------------------------------------------


@torch.library.custom_op("spikformer::lif_c", mutates_args=())
def _lif_c(x: torch.Tensor, tau: float, v_threshold: float, v_reset: float, alpha: float,
           detach_reset: bool) -> torch.Tensor:
    from ..fast.kernels import cpu

    return cpu.lif_forward(x, tau, v_threshold, v_reset)


@_lif_c.register_fake
def _(x, tau, v_threshold, v_reset, alpha, detach_reset):
    return torch.empty_like(as_time_major_dense(x))


@torch.library.custom_op("spikformer::lif_c_backward", mutates_args=())
def _lif_c_backward(x: torch.Tensor, grad_spikes: torch.Tensor, tau: float, v_threshold: float, v_reset: float,
                    alpha: float, detach_reset: bool) -> torch.Tensor:
    from ..fast.kernels import cpu

    return cpu.lif_backward(x, grad_spikes, tau, v_threshold, v_reset, alpha, detach_reset)


@_lif_c_backward.register_fake
def _(x, grad_spikes, tau, v_threshold, v_reset, alpha, detach_reset):
    return torch.empty_like(as_time_major_dense(x))


def _lif_c_setup(ctx, inputs, output) -> None:
    ctx.save_for_backward(inputs[0])  # the input: H is recomputed in the backward kernel
    ctx.args = inputs[1:]


def _lif_c_grad(ctx, grad_spikes):
    (x,) = ctx.saved_tensors
    return (_lif_c_backward(x, grad_spikes, *ctx.args),) + (None,) * 5


_lif_c.register_autograd(_lif_c_grad, setup_context=_lif_c_setup)


# --- the Triton kernel as a custom op -------------------------------------------------------------


@torch.library.custom_op("spikformer::lif_triton", mutates_args=())
def _lif_triton(x: torch.Tensor, tau: float, v_threshold: float, v_reset: float, alpha: float,
                detach_reset: bool, keep_h: bool) -> tuple[torch.Tensor, torch.Tensor]:
    from ..fast.kernels import triton_lif

    return triton_lif.lif_forward(x, tau, v_threshold, v_reset, keep_h)


@_lif_triton.register_fake
def _(x, tau, v_threshold, v_reset, alpha, detach_reset, keep_h):
    from ..fast.kernels.triton_lif import H_DTYPE

    x = as_time_major_dense(x)
    return torch.empty_like(x), (torch.empty_like(x, dtype=H_DTYPE) if keep_h else x.new_empty((0,)))


@torch.library.custom_op("spikformer::lif_triton_backward", mutates_args=())
def _lif_triton_backward(h: torch.Tensor, grad_spikes: torch.Tensor, tau: float, v_threshold: float,
                         v_reset: float, alpha: float, detach_reset: bool) -> torch.Tensor:
    from ..fast.kernels import triton_lif

    return triton_lif.lif_backward(h, grad_spikes, tau, v_threshold, v_reset, alpha, detach_reset)


@_lif_triton_backward.register_fake
def _(h, grad_spikes, tau, v_threshold, v_reset, alpha, detach_reset):
    return torch.empty_like(as_time_major_dense(h), dtype=grad_spikes.dtype)


def _lif_triton_setup(ctx, inputs, output) -> None:
    ctx.save_for_backward(output[1])  # H, written by the forward kernel
    ctx.args = inputs[1:6]


def _lif_triton_grad(ctx, grad_spikes, grad_h):
    (h,) = ctx.saved_tensors
    return (_lif_triton_backward(h, grad_spikes, *ctx.args),) + (None,) * 6


_lif_triton.register_autograd(_lif_triton_grad, setup_context=_lif_triton_setup)


# --- backends -------------------------------------------------------------------------------------

LIFBackend = Callable[[torch.Tensor, LIFParams], torch.Tensor]
_BACKENDS: Registry[LIFBackend] = Registry("LIF backend")


def register_lif_backend(name: str) -> Callable[[LIFBackend], LIFBackend]:
    """Register a multi-step LIF implementation ``fn(x [T, ...], params) -> spikes [T, ...]``."""
    return _BACKENDS.register(name)


def lif_backends() -> list[str]:
    return _BACKENDS.names()


register_lif_backend("torch")(lambda x, params: lif_reference(x, params))


@register_lif_backend("fused")
def lif_fused(x: torch.Tensor, params: LIFParams) -> torch.Tensor:
    return _FusedLIF.apply(x, params)


@register_lif_backend("c")
def lif_c(x: torch.Tensor, params: LIFParams) -> torch.Tensor:
    if not _can_run("c", x.device.type, x.dtype):
        raise RuntimeError(_unavailable_reason("c", x))
    return _lif_c(x, *_op_args(params))


@register_lif_backend("triton")
def lif_triton(x: torch.Tensor, params: LIFParams) -> torch.Tensor:
    if not _can_run("triton", x.device.type, x.dtype):
        raise RuntimeError(_unavailable_reason("triton", x))
    keep_h = torch.is_grad_enabled() and x.requires_grad
    return _lif_triton(x, *_op_args(params), keep_h)[0]


def _op_args(p: LIFParams) -> tuple[float, float, float, float, bool]:
    """The scalar arguments of the custom ops (their schema wants floats, a user may pass ints)."""
    return float(p.tau), float(p.v_threshold), float(p.v_reset), float(p.surrogate_alpha), bool(p.detach_reset)


@functools.cache
def backend_available(name: str, device_type: str, dtype: torch.dtype) -> bool:
    """Whether backend ``name`` can run on tensors of this device type and dtype (cached)."""
    if name in ("torch", "fused"):
        return name in _BACKENDS
    if name == "c":
        from ..fast.kernels import cpu

        return device_type == "cpu" and cpu.available(dtype)
    if name == "triton":
        from ..fast.kernels import triton_lif

        return device_type == "cuda" and triton_lif.available(dtype)
    return name in _BACKENDS


@torch.compiler.assume_constant_result
def _can_run(name: str, device_type: str, dtype: torch.dtype) -> bool:
    return backend_available(name, device_type, dtype)  # a constant for torch.compile: no tracing into it


def _unavailable_reason(name: str, x: torch.Tensor) -> str:
    where = {"c": "CPU tensors with a working C compiler", "triton": "CUDA tensors with Triton installed"}
    return (f"LIF backend {name!r} cannot run on a {x.device.type} {x.dtype} tensor (it needs "
            f"{where.get(name, 'another device')}); use backend='auto' or 'fused'")


@torch.compiler.assume_constant_result
def default_backend(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> str:
    """The backend ``"auto"`` uses for tensors on ``device`` of ``dtype``: the fastest one available."""
    device_type = torch.device(device).type
    fastest = {"cpu": "c", "cuda": "triton"}.get(device_type)
    return fastest if fastest and backend_available(fastest, device_type, dtype) else "fused"


def resolve_backend(backend: str, x: torch.Tensor) -> str:
    name = default_backend(x.device.type, x.dtype) if backend == "auto" else backend
    if name not in _BACKENDS:
        raise ValueError(f"unknown LIF backend {name!r}; available: auto, {', '.join(lif_backends())}")
    # the compiled kernels serve one device each: refuse the others here, before a fused layer calls a kernel
    if name in ("c", "triton") and not _can_run(name, x.device.type, x.dtype):
        raise RuntimeError(_unavailable_reason(name, x))
    return name


def lif_multistep(x: torch.Tensor, params: LIFParams = LIFParams(), backend: str = "auto") -> torch.Tensor:
    """Run a multi-step LIF over ``x [T, ...]`` and return spikes of the same shape and dtype."""
    return _BACKENDS[resolve_backend(backend, x)](x, params)


# --- raw kernels, for layers that fuse the LIF with a preceding normalisation ----------------------


def lif_forward_no_grad(x: torch.Tensor, params: LIFParams, backend: str) -> torch.Tensor:
    """Spikes of ``x`` without recording anything for autograd (``backend`` as resolved)."""
    with torch.no_grad():
        if backend == "c":
            return _lif_c(x, *_op_args(params))
        if backend == "triton":
            return _lif_triton(x, *_op_args(params), False)[0]
        if backend == "fused":
            return torch_lif_forward(x, params, keep_h=False)[0]
        return _BACKENDS[backend](x, params)


def lif_backward_from_input(x: torch.Tensor, grad_spikes: torch.Tensor, params: LIFParams,
                            backend: str) -> torch.Tensor:
    """Gradient of the LIF input from the input itself (``H`` is recomputed) and the spikes' gradient."""
    with torch.no_grad():
        if backend == "c":
            return _lif_c_backward(x, grad_spikes, *_op_args(params))
        if backend == "triton":
            h = _lif_triton(x, *_op_args(params), True)[1]
            return _lif_triton_backward(h, grad_spikes, *_op_args(params))
        if backend == "fused":
            return torch_lif_backward(torch_lif_forward(x, params, keep_h=True)[1], grad_spikes, params)
    with torch.enable_grad():  # any other registered backend: differentiate it
        x = x.detach().requires_grad_()
        (grad_x,) = torch.autograd.grad(_BACKENDS[backend](x, params), x, grad_spikes)
    return grad_x
