"""The fast model path (fused kernels, BatchNorm->LIF recompute, BN folding, exact half-precision spike
products, torch.compile) changes no spike of the oracle path: the same model with the ``torch`` LIF."""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch
from torch import nn

import spikformer
from spikformer.layers import (
    LinearBNLIF,
    SpikformerBlock,
    SpikingConvStage,
    exact_spike_product_dtype,
    exact_spike_products,
    spike_attention,
)
from spikformer.neurons.batchnorm import batch_norm, normalize

TINY = dict(embed_dim=32, depth=2, num_heads=2, img_size=16)


def tiny_pair(**overrides) -> tuple[nn.Module, nn.Module]:
    """The oracle (``torch`` LIF backend) and the default fast path, with the same weights."""
    kwargs = {**TINY, **overrides}
    oracle = spikformer.create_model("spikformer_cifar_4_256", lif_backend="torch", **kwargs)
    fast = spikformer.create_model("spikformer_cifar_4_256", **kwargs)
    fast.load_state_dict(oracle.state_dict())
    return oracle, fast


def images(batch: int = 2, size: int = 16) -> torch.Tensor:
    return torch.randn(batch, 3, size, size) * 2.0


def assert_grads_close(a: nn.Module, b: nn.Module) -> None:
    largest = max(float(p.grad.abs().max()) for p in a.parameters())
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        if name.endswith("linear.bias"):
            # A bias right before a training-mode BatchNorm has a zero gradient in exact arithmetic: both
            # paths must leave only rounding noise there.
            assert float(pa.grad.abs().max()) < 1e-5 * largest and float(pb.grad.abs().max()) < 1e-5 * largest
            continue
        scale = float(pa.grad.abs().max())
        torch.testing.assert_close(pb.grad, pa.grad, rtol=1e-5, atol=1e-5 * scale, msg=name)


def test_fast_path_matches_the_oracle_spike_for_spike_in_training():
    oracle, fast = tiny_pair()
    x = images()
    out_oracle, out_fast = oracle(x), fast(x)
    assert torch.equal(out_fast, out_oracle)
    out_oracle.square().sum().backward()
    out_fast.square().sum().backward()
    assert_grads_close(oracle, fast)
    for (name, a), (_, b) in zip(oracle.named_buffers(), fast.named_buffers()):
        assert torch.equal(a, b), name  # running statistics updated identically


def test_fast_path_matches_the_oracle_in_eval():
    oracle, fast = tiny_pair()
    oracle.train()(images(4))  # non-trivial running statistics
    fast.load_state_dict(oracle.state_dict())
    oracle.eval(), fast.eval()
    x = images(3)
    with torch.no_grad():
        assert torch.equal(fast(x), oracle(x))


def test_event_frames_take_the_fast_path_too():
    oracle, fast = tiny_pair(in_chans=2, T=3)
    frames = (torch.rand(2, 3, 2, 16, 16) < 0.3).float()  # [B, T, 2, H, W]
    assert torch.equal(fast(frames), oracle(frames))


def saved_bytes(module: nn.Module, x: torch.Tensor) -> int:
    """Bytes autograd keeps for the backward pass of ``module(x)`` (each storage counted once)."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        module(x)
    return sum(storages.values()) - x.untyped_storage().nbytes() * (x.untyped_storage().data_ptr() in storages)


def test_batch_norm_lif_keeps_only_the_batchnorm_input_for_backward():
    unit = LinearBNLIF(64, 64)
    x = torch.randn(4, 2, 16, 64, requires_grad=True)
    one_activation = x.numel() * x.element_size()
    # fast: the linear output (BatchNorm's input); the BN output and H are recomputed, not stored
    assert saved_bytes(unit, x) <= one_activation + 64 * 64 * 4 + 4096
    unit.lif.backend = "torch"  # the oracle keeps BN output, H and more per step
    assert saved_bytes(unit, x) >= 3 * one_activation


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_conv_stage_fast_path_matches_the_oracle(layout):
    stage = SpikingConvStage(4, 8, pool=True)
    oracle = copy.deepcopy(stage)
    oracle.lif.backend = "torch"
    x = (torch.rand(3, 2, 4, 16, 16) < 0.4).float()
    if layout == "channels_last":
        stage, oracle = stage.to(memory_format=torch.channels_last), oracle.to(memory_format=torch.channels_last)
        x = x.flatten(0, 1).contiguous(memory_format=torch.channels_last).unflatten(0, (3, 2))
    a, b = stage(x.clone().requires_grad_()), oracle(x)
    assert torch.equal(a, b)
    grad = torch.randn(a.shape)
    a.backward(grad)
    b.backward(grad)
    assert_grads_close(oracle, stage)



def test_the_cpu_stem_runs_channels_last_and_hands_over_contiguous_tokens():
    model = spikformer.create_model("spikformer_cifar_4_256", **TINY).eval()
    stage_outputs = []
    hooks = [stage.register_forward_hook(lambda module, args, out: stage_outputs.append(out))
             for stage in model.patch_embed.stages]
    x = model.time_first(images())
    first = model.patch_embed.stages[0]
    with torch.no_grad():
        tokens = model.patch_embed(x)
        for hook in hooks:
            hook.remove()
        first.channels_last = False
        nchw = first(x)
    for out in stage_outputs:  # each step's images channels-last, so conv and max-pool take NHWC
        assert out.flatten(0, 1).is_contiguous(memory_format=torch.channels_last)
    assert tokens.is_contiguous()  # [T, B, N, D] is a view of the last stage's NHWC memory: no copy
    # the layout changes no value: the same stage on NCHW images (the layout kept on GPUs) fires the same spikes
    assert nchw.flatten(0, 1).is_contiguous()
    assert torch.equal(stage_outputs[0], nchw)


@pytest.mark.parametrize("kind", ["tokens", "nchw", "channels_last"])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_batch_norm_is_torch_batchnorm_up_to_rounding(kind, momentum):
    if kind == "tokens":
        norm, y = nn.BatchNorm1d(6, momentum=momentum), torch.randn(50, 6) * 3 + 1
    else:
        norm, y = nn.BatchNorm2d(6, momentum=momentum), torch.randn(4, 6, 5, 5) * 3 + 1
        if kind == "channels_last":
            y = y.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-1, 1)
    ours = copy.deepcopy(norm)
    y1, y2 = y.clone().requires_grad_(), y.clone().requires_grad_()
    expected, got = norm(y1), batch_norm(y2, ours)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(ours, name), getattr(norm, name), rtol=1e-6, atol=1e-6)
    grad = torch.randn(y.shape)
    expected.backward(grad)
    got.backward(grad)
    torch.testing.assert_close(y2.grad, y1.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ours.weight.grad, norm.weight.grad, rtol=1e-4, atol=1e-5)
    norm.eval(), ours.eval()
    with torch.no_grad():
        torch.testing.assert_close(batch_norm(y, ours), norm(y), rtol=1e-5, atol=1e-5)


# tokens [T, B, N, D] with N != D, and N == D (where the wrong axis would give no error)
@pytest.mark.parametrize("shape", [(2, 3, 5, 8), (2, 3, 8, 8), (2, 3, 8, 6, 6)], ids=["tokens", "square", "images"])
def test_sync_batchnorm_normalises_over_the_same_channels_as_batchnorm(shape):
    norm = nn.BatchNorm2d(shape[2]) if len(shape) == 5 else nn.BatchNorm1d(shape[-1])
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-1, 1)
    sync = nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(nn.Sequential(norm)))[0]
    assert isinstance(sync, nn.SyncBatchNorm)
    x = torch.randn(shape) * 3 + 1
    # without a process group SyncBatchNorm normalises with this process's batch statistics
    torch.testing.assert_close(normalize(x, sync), normalize(x, norm), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sync.running_mean, norm.running_mean)
    sync.eval(), norm.eval()
    torch.testing.assert_close(normalize(x, sync), normalize(x, norm), rtol=1e-5, atol=1e-5)


def test_model_with_sync_batchnorm_runs_forward_and_backward():
    model = nn.SyncBatchNorm.convert_sync_batchnorm(spikformer.create_model("spikformer_cifar_4_256", **TINY))
    assert any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())
    model(images()).square().sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("kind", ["tokens", "nchw", "channels_last"])
def test_kernel_batch_statistics_are_exact_var_mean_and_differentiable(kind, dtype):
    from spikformer.fast.kernels import cpu
    from spikformer.neurons.batchnorm import _KernelBatchStatistics

    shape, dims = ((300, 7), (0,)) if kind == "tokens" else ((6, 7, 9, 11), (0, 2, 3))
    y = (torch.randn(shape, dtype=torch.float64) * 3 + 100).to(dtype)  # a large mean: no cancellation allowed
    if kind == "channels_last":
        y = y.contiguous(memory_format=torch.channels_last)
    var, mean = torch.var_mean(y.double(), dims, correction=0)
    got_mean, got_var = cpu.bn_stats(y)
    torch.testing.assert_close(got_mean, mean, rtol=1e-13, atol=0)
    torch.testing.assert_close(got_var, var, rtol=1e-11, atol=0)
    if dtype == torch.float64:
        torch.autograd.gradcheck(_KernelBatchStatistics.apply, (y[:4].detach().requires_grad_(),))


def test_fuse_folds_every_batchnorm_and_keeps_eval_outputs():
    model = spikformer.create_model("spikformer_cifar_4_256", **TINY)
    model.train()
    for _ in range(2):
        model(images(4))  # running statistics away from their initial values
    model.eval()
    x = images(3)
    with torch.no_grad():
        expected = model(x)
        fused = copy.deepcopy(model).fuse()
        got = fused(x)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in fused.modules())
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_a_fused_model_refuses_to_train():
    model = spikformer.create_model("spikformer_cifar_4_256", **TINY).fuse()
    with pytest.raises(RuntimeError, match="folded"):
        model.train()


def test_block_compiles_without_graph_breaks():
    block = SpikformerBlock(32, 2, 4.0, True, 0.125)
    x = (torch.rand(2, 2, 16, 32) < 0.3).float()
    # fullgraph=True raises at the first graph break; aot_eager also traces the backward pass
    compiled = torch.compile(copy.deepcopy(block), backend="aot_eager", fullgraph=True)
    out, expected = compiled(x), block(x)
    assert torch.equal(out, expected)
    out.sum().backward()


def test_whole_model_compiles_as_one_graph():
    model = spikformer.create_model("spikformer_cifar_4_256", **{**TINY, "depth": 1})
    explanation = torch._dynamo.explain(model)(images())
    assert explanation.graph_break_count == 0, explanation.break_reasons


def test_spike_products_are_exact_in_float16():
    # 0/1 operands and integer sums up to N*d = 2048: float16 (11-bit significand) is exact.
    q, k, v = ((torch.rand(2, 3, 64, 32) < p).float() for p in (0.9, 0.9, 0.9))
    exact = (q @ k.transpose(-2, -1)) @ v
    assert exact.max() > 256  # beyond what bfloat16 holds exactly
    half = q.half() @ (k.half().transpose(-2, -1) @ v.half())
    assert torch.equal(half.float(), exact)


def test_spike_attention_stays_exact_under_bfloat16_autocast():
    q, k, v = ((torch.rand(2, 2, 64, 32) < 0.9).float() for _ in range(3))
    exact = spike_attention(q, k, v)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = q.bfloat16(), k.bfloat16(), v.bfloat16()
        out = spike_attention(*bf16)
        naive = bf16[0] @ (bf16[1].transpose(-2, -1) @ bf16[2])
    assert exact.max() > 256
    assert out.dtype == torch.float32 and torch.equal(out, exact)
    assert not torch.equal(naive.float(), exact)  # what plain autocast would have done


@contextlib.contextmanager
def cuda_autocast(dtype: torch.dtype):
    """CUDA autocast's state as a CUDA machine has it inside ``torch.autocast("cuda", dtype)`` (the context
    manager itself switches off where CUDA is missing; the state it sets is what the code asks)."""
    enabled, previous = torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda")
    torch.set_autocast_enabled("cuda", True)
    torch.set_autocast_dtype("cuda", dtype)
    try:
        yield
    finally:
        torch.set_autocast_enabled("cuda", enabled)
        torch.set_autocast_dtype("cuda", previous)


def cuda_product_dtype(num_tokens: int, head_dim: int, autocast_dtype: torch.dtype) -> torch.dtype:
    """The dtype ``spike_attention`` picks for CUDA spikes that need a gradient, under CUDA autocast."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        q = torch.empty(2, 1, num_tokens, head_dim, device="cuda", requires_grad=True)
    with cuda_autocast(autocast_dtype):
        return exact_spike_product_dtype(q, num_tokens, head_dim, torch.float32)


# spikformer_cifar_4_384 (64 tokens, heads of 32), and a head small enough for bfloat16's exact integers
@pytest.mark.parametrize("num_tokens, head_dim", [(64, 32), (16, 16)])
@pytest.mark.parametrize("autocast_dtype", [torch.bfloat16, torch.float16], ids=str)
def test_spike_products_never_narrow_the_exponent_of_cuda_autocast(num_tokens, head_dim, autocast_dtype):
    dtype = cuda_product_dtype(num_tokens, head_dim, autocast_dtype)
    assert torch.finfo(dtype).max >= torch.finfo(autocast_dtype).max
    assert torch.finfo(dtype).tiny <= torch.finfo(autocast_dtype).tiny


@pytest.mark.parametrize("num_tokens, head_dim", [(64, 32), (16, 16)])
@pytest.mark.parametrize("autocast_dtype", [torch.bfloat16, torch.float16], ids=str)
def test_spike_product_gradients_under_cuda_autocast_match_float32(num_tokens, head_dim, autocast_dtype):
    # The products in the dtype chosen for a CUDA GPU, replayed on the CPU. Spikes fire at the models' rates;
    # the output gradient has the magnitude measured at batch 64 (in float16's subnormal range), times the
    # GradScaler's initial scale under float16 autocast (bfloat16 autocast runs without one).
    dtype = cuda_product_dtype(num_tokens, head_dim, autocast_dtype)
    q, k, v = ((torch.rand(4, 12, num_tokens, head_dim) < rate).float() for rate in (0.1, 0.15, 0.2))
    loss_scale = 2.0**16 if autocast_dtype == torch.float16 else 1.0
    grad_out = torch.randn(4, 12, num_tokens, head_dim) * 1e-7 * loss_scale

    def grads(product_dtype):
        leaves = [t.to(product_dtype).requires_grad_() for t in (q, k, v)]
        out = exact_spike_products(*leaves, product_dtype)
        return torch.autograd.grad(out, leaves, grad_out.to(product_dtype))

    for got, want in zip(grads(dtype), grads(torch.float32)):
        error = float((got.float() - want).abs().max() / want.abs().max())
        assert error < 1e-2, (dtype, error)


def test_bfloat16_autocast_training_step_runs_and_stays_finite():
    model = spikformer.create_model("spikformer_cifar_4_256", embed_dim=16, depth=1, num_heads=2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(images(2, 16))
        loss = nn.functional.cross_entropy(logits.float(), torch.tensor([1, 2]))
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    optimizer.step()


cuda = pytest.mark.gpu  # skipped without a GPU (conftest.py); benchmarks/gpu_check.sh runs these


@cuda
def test_gpu_fast_path_matches_the_oracle():
    oracle, fast = tiny_pair()
    oracle, fast = oracle.cuda(), fast.cuda()
    x = images().cuda()
    out_oracle, out_fast = oracle(x), fast(x)
    assert torch.equal(out_fast, out_oracle)
    out_oracle.square().sum().backward()
    out_fast.square().sum().backward()
    assert_grads_close(oracle, fast)
    oracle.eval(), fast.eval()
    with torch.no_grad():
        assert torch.equal(fast(x), oracle(x))  # float16 spike products in inference
