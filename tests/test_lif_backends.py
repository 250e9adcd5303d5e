"""Every LIF backend computes the oracle's function: identical spikes, gradients within 1e-6 (float32)."""

from __future__ import annotations

import sys

import pytest
import torch

from spikformer.fast.kernels import cpu as cpu_kernel
from spikformer.fast.kernels import is_time_major_dense
from spikformer.neurons import (
    LIF,
    LIFParams,
    backend_available,
    default_backend,
    lif_backends,
    lif_multistep,
    lif_reference,
)

FAST_CPU_BACKENDS = [name for name in ("fused", "c") if backend_available(name, "cpu", torch.float32)]
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]


def membrane_input(shape, dtype=torch.float32, seed=0) -> torch.Tensor:
    """Inputs around the threshold, so that many neurons fire and many do not."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g) * 1.5 + 0.6).to(dtype)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def grad_of(fn, x: torch.Tensor, grad_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.detach().clone().requires_grad_()
    out = fn(x)
    (grad,) = torch.autograd.grad(out, x, grad_out)
    return out.detach(), grad


def test_cpu_kernel_builds_here():
    # The machines this project runs on have a C compiler; the fallback is tested separately below.
    assert cpu_kernel.available(torch.float32)
    assert "c" in FAST_CPU_BACKENDS


@pytest.mark.parametrize("backend", FAST_CPU_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("detach_reset", [True, False])
def test_fused_lif_spikes_match_reference_bit_for_bit(backend, dtype, detach_reset):
    params = LIFParams(detach_reset=detach_reset)
    x = membrane_input((6, 3, 257, 5), dtype)  # odd trailing sizes: tails of vector loops and thread chunks
    assert torch.equal(lif_multistep(x, params, backend), lif_reference(x, params))


@pytest.mark.parametrize("backend", FAST_CPU_BACKENDS)
@pytest.mark.parametrize("tau, v_threshold, v_reset", [(3.0, 0.5, 0.0), (1.7, 1.0, -0.3), (2.0, 0.3, 0.1)])
def test_lif_spikes_match_reference_for_other_constants(backend, tau, v_threshold, v_reset):
    params = LIFParams(tau=tau, v_threshold=v_threshold, v_reset=v_reset)
    for dtype in (torch.float32, torch.bfloat16):
        x = membrane_input((5, 4096), dtype, seed=1)
        assert torch.equal(lif_multistep(x, params, backend), lif_reference(x, params))


@pytest.mark.parametrize("backend", FAST_CPU_BACKENDS)
@pytest.mark.parametrize("detach_reset", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_lif_gradients_match_reference_within_1e6(backend, detach_reset, dtype):
    params = LIFParams(detach_reset=detach_reset)
    x = membrane_input((4, 8, 64, 48), dtype)
    grad_out = torch.randn(x.shape, dtype=dtype)
    spikes, grad = grad_of(lambda t: lif_multistep(t, params, backend), x, grad_out)
    ref_spikes, ref_grad = grad_of(lambda t: lif_reference(t, params), x, grad_out)
    assert torch.equal(spikes, ref_spikes)
    assert relative_error(grad, ref_grad) < 1e-6
    # elementwise, relative to the gradient's scale: where sigmoid(x) ~ 1 the oracle's own 1 - sigmoid(x)
    # cancels, so one ulp of difference in exp() shows there as a larger relative difference
    torch.testing.assert_close(grad, ref_grad, rtol=1e-6, atol=1e-6 * float(ref_grad.abs().max()))


@pytest.mark.parametrize("backend", FAST_CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_half_precision_lif_gradients_are_close_to_the_oracle(backend, dtype):
    params = LIFParams()
    x = membrane_input((4, 2048), dtype)
    grad_out = torch.randn(x.shape).to(dtype)
    _, grad = grad_of(lambda t: lif_multistep(t, params, backend), x, grad_out)
    # The oracle rounds every step of its backward pass to the half type; the kernels accumulate in float32.
    _, ref = grad_of(lambda t: lif_reference(t, params), x, grad_out)
    assert grad.dtype == dtype
    assert relative_error(grad, ref) < (2e-2 if dtype == torch.bfloat16 else 3e-3)


@pytest.mark.parametrize("backend", FAST_CPU_BACKENDS)
@pytest.mark.parametrize("shape", [(1, 1), (3,), (2, 0, 5), (16, 2, 3), (4, 2, 2, 2, 3, 3)])
def test_lif_accepts_any_trailing_shape(backend, shape):
    x = membrane_input(shape)
    assert torch.equal(lif_multistep(x, LIFParams(), backend), lif_reference(x, LIFParams()))


def test_c_kernel_reads_channels_last_images_in_place():
    x = membrane_input((4, 2, 8, 5, 5)).flatten(0, 1).contiguous(memory_format=torch.channels_last)
    x = x.unflatten(0, (4, 2))  # [T, B, C, H, W] with channels-last steps, as the stem produces
    assert not x.is_contiguous() and is_time_major_dense(x)
    spikes = lif_multistep(x, LIFParams(), "c")
    assert spikes.stride() == x.stride()  # written in the same layout, no copy
    assert torch.equal(spikes, lif_reference(x, LIFParams()))
    grad_out = torch.randn(x.shape)
    _, grad = grad_of(lambda t: lif_multistep(t, LIFParams(), "c"), x, grad_out)
    _, ref = grad_of(lambda t: lif_reference(t, LIFParams()), x, grad_out)
    torch.testing.assert_close(grad, ref, rtol=1e-6, atol=1e-7)


def test_lif_handles_non_dense_inputs():
    x = membrane_input((4, 6, 10))[:, ::2, 1:]  # strided: copied to a dense buffer first
    assert not is_time_major_dense(x)
    for backend in FAST_CPU_BACKENDS:
        assert torch.equal(lif_multistep(x, LIFParams(), backend), lif_reference(x, LIFParams()))


def test_auto_backend_picks_the_c_kernel_on_cpu():
    assert default_backend("cpu", torch.float32) == "c"
    assert LIF()(membrane_input((2, 3))).shape == (2, 3)
    assert {"torch", "fused", "c", "triton"} <= set(lif_backends())


def test_unknown_or_unusable_backend_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown LIF backend"):
        lif_multistep(membrane_input((2, 3)), LIFParams(), "cupy")
    with pytest.raises(RuntimeError, match="triton"):
        lif_multistep(membrane_input((2, 3)), LIFParams(), "triton")  # CPU tensor


def test_lif_custom_op_passes_opcheck():
    x = membrane_input((3, 4, 5)).requires_grad_()
    from spikformer.neurons.lif_backends import _lif_c

    # (torch.compile is covered by the next test; opcheck's own compile check is slow)
    torch.library.opcheck(_lif_c, (x, 2.0, 1.0, 0.0, 4.0, True),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


def test_lif_layer_traces_into_one_graph():
    layer = LIF()
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    x = membrane_input((4, 2, 16)).requires_grad_()
    spikes = compiled(x)
    spikes.sum().backward()
    assert torch.equal(spikes, lif_reference(x.detach(), LIFParams()))


@pytest.fixture
def fresh_kernel_state(monkeypatch, tmp_path):
    """Forget the built C kernel and the backend choices; restore them afterwards."""
    import spikformer.neurons.lif_backends  # noqa: F401  (the module, not the function of that name)

    neuron = sys.modules["spikformer.neurons.lif_backends"]

    def clear():
        cpu_kernel._library.cache_clear()
        neuron.backend_available.cache_clear()

    monkeypatch.setenv("SPIKFORMER_CACHE_DIR", str(tmp_path / "cache"))
    clear()
    yield
    monkeypatch.undo()
    clear()


def test_without_a_compiler_auto_falls_back_to_the_pure_torch_kernel(fresh_kernel_state, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("CC", "no-such-compiler")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a missing compiler is not worth a warning
        assert default_backend("cpu", torch.float32) == "fused"
    x = membrane_input((4, 100))
    assert torch.equal(lif_multistep(x), lif_reference(x, LIFParams()))
    with pytest.raises(RuntimeError, match="C compiler"):
        lif_multistep(x, LIFParams(), "c")


def test_a_failing_compiler_warns_and_falls_back(fresh_kernel_state, monkeypatch, tmp_path):
    fake = tmp_path / "cc"
    fake.write_text("#!/bin/sh\necho 'fake compiler: broken' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("CC", str(fake))
    with pytest.warns(RuntimeWarning, match="could not be built"):
        assert default_backend("cpu", torch.float32) == "fused"


def fused_layer_calls(device: str):
    """Every entry point that runs a LIF kernel: alone, after a BatchNorm (training, eval), after conv + BN."""
    from torch import nn

    from spikformer.neurons.batchnorm import batch_norm_lif, conv_batch_norm_lif

    tokens, images = torch.randn(2, 3, 5, 8, device=device), torch.randn(4, 3, 6, 6, device=device)
    bn1, bn2 = nn.BatchNorm1d(8, device=device), nn.BatchNorm2d(4, device=device)
    conv = nn.Conv2d(3, 4, 3, padding=1, bias=False, device=device)
    return {
        "lif": lambda backend: lif_multistep(tokens, LIFParams(), backend),
        "bn_train": lambda backend: batch_norm_lif(tokens.requires_grad_(), bn1.train(), LIFParams(), backend),
        "bn_eval": lambda backend: batch_norm_lif(tokens, bn1.eval(), LIFParams(), backend),
        "conv_bn": lambda backend: conv_batch_norm_lif(images, conv, bn2.train(), LIFParams(), 2, backend),
    }


def fake_cuda_tensors_or_skip() -> None:
    """Skip where this PyTorch cannot make a fake CUDA tensor without a CUDA driver (older releases start CUDA)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    try:
        with FakeTensorMode():
            fused_layer_calls("cuda")["lif"]("torch")
    except (RuntimeError, AssertionError) as error:
        pytest.skip(f"this PyTorch ({torch.__version__}) makes no fake CUDA tensor here: {str(error)[:80]}")


@pytest.mark.parametrize("call", ["lif", "bn_train", "bn_eval", "conv_bn"])
def test_c_backend_refuses_cuda_tensors_with_the_backend_error(call):
    from torch._subclasses.fake_tensor import FakeTensorMode

    fake_cuda_tensors_or_skip()
    with FakeTensorMode(), pytest.raises(RuntimeError, match="LIF backend 'c' cannot run on a cuda .*'auto'"):
        fused_layer_calls("cuda")[call]("c")


@pytest.mark.parametrize("call", ["lif", "bn_train", "bn_eval", "conv_bn"])
def test_triton_backend_refuses_cpu_tensors_with_the_backend_error(call):
    with pytest.raises(RuntimeError, match="LIF backend 'triton' cannot run on a cpu .*'auto'"):
        fused_layer_calls("cpu")[call]("triton")


def test_triton_kernels_launch_on_the_device_of_their_tensors(monkeypatch):
    # Triton launches on the current CUDA device, which stays cuda:0 in a process that trains on cuda:1
    # without torchrun. The CUDA device switch and the launches are recorded on fake cuda:1 tensors.
    pytest.importorskip("triton")
    import contextlib

    from torch._subclasses.fake_tensor import FakeTensorMode

    from spikformer.fast.kernels import triton_lif

    current, launches = ["cuda:0"], []

    @contextlib.contextmanager
    def device(d):
        previous, current[0] = current[0], str(torch.device(d))
        yield
        current[0] = previous

    class RecordedKernel:
        def __getitem__(self, grid):
            return lambda *args, **options: launches.append(current[0])

    monkeypatch.setattr(torch.cuda, "device", device)
    monkeypatch.setattr(triton_lif, "_lif_forward_kernel", RecordedKernel())
    monkeypatch.setattr(triton_lif, "_lif_backward_kernel", RecordedKernel())
    with FakeTensorMode():
        x = torch.empty(4, 3, 8, device="cuda:1")
    spikes, h = triton_lif.lif_forward(x, 2.0, 1.0, 0.0, True)
    triton_lif.lif_backward(h, spikes, 2.0, 1.0, 0.0, 4.0, True)
    assert launches == ["cuda:1", "cuda:1"]


def test_triton_kernel_matches_reference_in_the_interpreter(monkeypatch):
    pytest.importorskip("triton")
    import importlib

    from spikformer.fast.kernels import triton_lif

    # Kernels defined while TRITON_INTERPRET=1 run on CPU tensors through Triton's interpreter. Its bfloat16
    # rounding is not faithful (it truncates), so bfloat16 is checked on GPUs only.
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    importlib.reload(triton_lif)
    try:
        for detach in (True, False):
            params = LIFParams(detach_reset=detach)
            for dtype in (torch.float32, torch.float16):
                x = membrane_input((4, 3, 700), dtype)
                grad_out = torch.randn(x.shape).to(dtype)
                ref, ref_grad = grad_of(lambda t, p=params: lif_reference(t, p), x, grad_out)
                spikes, h = triton_lif.lif_forward(x, 2.0, 1.0, 0.0, True)
                grad = triton_lif.lif_backward(h, grad_out, 2.0, 1.0, 0.0, 4.0, detach)
                assert torch.equal(spikes, ref), (dtype, detach)
                assert relative_error(grad, ref_grad) < (1e-6 if dtype == torch.float32 else 3e-3), (dtype, detach)
    finally:
        monkeypatch.undo()
        importlib.reload(triton_lif)


def round_to_nearest_in_the_interpreter(monkeypatch) -> None:
    """Make the Triton interpreter round float32 to bfloat16 to nearest-even, as the GPU does (``cvt.rn``).

    The interpreter truncates that conversion; its float32 to float16 conversion (numpy's) already rounds to
    nearest."""
    import numpy as np
    import triton.language as tl
    from triton.runtime import interpreter

    truncating = interpreter.InterpreterBuilder.cast_impl

    def cast(self, src, dst_type):
        if src.dtype.scalar == tl.float32 and dst_type.scalar == tl.bfloat16:
            rounded = torch.from_numpy(np.ascontiguousarray(src.data)).to(torch.bfloat16).view(torch.int16)
            return interpreter.TensorHandle(rounded.numpy().view(np.uint16), dst_type.scalar)
        return truncating(self, src, dst_type)

    monkeypatch.setattr(interpreter.InterpreterBuilder, "cast_impl", cast)


def just_below_threshold(dtype: torch.dtype) -> torch.Tensor:
    """``[3, 8]`` inputs (tau 2, threshold 1, so ``h1 = x0 / 4 + x1 / 2``) whose second membrane lies below the
    threshold in float32 but within half a unit of it in ``dtype``: ``x1 = 2 - eps``, ``x0`` in ``(eps, 2 eps)``.
    A third step carries a gradient back through the second one's reset."""
    eps = torch.finfo(dtype).eps
    return torch.stack([eps * torch.linspace(1.1, 1.9, 8), torch.full((8,), 2.0 - eps), torch.ones(8)]).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_triton_lif_backward_sees_no_spike_on_a_membrane_just_below_threshold(monkeypatch, dtype):
    pytest.importorskip("triton")
    import importlib

    from spikformer.fast.kernels import triton_lif

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    round_to_nearest_in_the_interpreter(monkeypatch)
    importlib.reload(triton_lif)
    try:
        x = just_below_threshold(dtype)
        h32 = (x[0].float() / 2 + x[1].float()) / 2
        assert (h32 < 1).all() and (h32.to(dtype) == 1).any()  # the case: rounding would reach the threshold
        grad_out = torch.ones(x.shape, dtype=dtype)
        for detach in (True, False):
            params = LIFParams(detach_reset=detach)
            ref, ref_grad = grad_of(lambda t, p=params: lif_reference(t, p), x, grad_out)
            spikes, h = triton_lif.lif_forward(x, 2.0, 1.0, 0.0, True)
            grad = triton_lif.lif_backward(h, grad_out, 2.0, 1.0, 0.0, 4.0, detach)
            assert torch.equal(spikes, ref) and grad.dtype == dtype
            assert relative_error(grad, ref_grad) < 2e-2, (dtype, detach)  # the GPU test's tolerance
    finally:
        monkeypatch.undo()
        importlib.reload(triton_lif)


cuda = pytest.mark.gpu  # skipped without a GPU (conftest.py); benchmarks/gpu_check.sh runs these


@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("detach_reset", [True, False])
def test_triton_lif_matches_reference_on_gpu(dtype, detach_reset):
    params = LIFParams(detach_reset=detach_reset)
    x = membrane_input((4, 32, 64, 384), dtype).cuda()
    grad_out = torch.randn(x.shape, device="cuda").to(dtype)
    assert default_backend("cuda", dtype) == "triton"
    spikes, grad = grad_of(lambda t: lif_multistep(t, params, "triton"), x, grad_out)
    ref_spikes, ref_grad = grad_of(lambda t: lif_reference(t, params), x, grad_out)
    assert torch.equal(spikes, ref_spikes)
    if dtype == torch.float32:
        assert relative_error(grad, ref_grad) < 1e-6
    else:
        assert relative_error(grad, ref_grad) < 2e-2
