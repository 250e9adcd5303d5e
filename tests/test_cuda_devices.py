"""CUDA device choices, asked of a fake machine: the GPUs' count and compute capability are what the code reads."""

import pytest
import torch

from spikformer.errors import ConfigError
from spikformer.train import engine


def fake_gpus(monkeypatch, capability: tuple[int, int], count: int = 2) -> list:
    """CUDA as seen from a machine with ``count`` GPUs of ``capability``; returns the devices asked about.
    ``is_bf16_supported`` answers as PyTorch does there: True, counting emulated bfloat16 as support."""
    asked = []

    def get_device_capability(device=None):
        asked.append(torch.device(device) if device is not None else None)
        return capability

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "get_device_capability", get_device_capability)
    monkeypatch.setattr(
        torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation or capability >= (8, 0)
    )
    return asked


def test_auto_amp_on_a_gpu_without_native_bfloat16_uses_float16(monkeypatch):
    # a V100 (7.0): bfloat16 only emulated, many times slower; float16 with loss scaling as the original recipes
    asked = fake_gpus(monkeypatch, (7, 0))
    assert engine.autocast_dtype(torch.device("cuda:1"), "auto") is torch.float16
    assert asked == [torch.device("cuda:1")]  # the run's GPU, not the current one


def test_auto_amp_on_an_ampere_or_later_gpu_uses_bfloat16(monkeypatch):
    fake_gpus(monkeypatch, (9, 0))
    assert engine.autocast_dtype(torch.device("cuda:0"), "auto") is torch.bfloat16


def test_a_gpu_index_beyond_the_machine_is_a_config_error(monkeypatch):
    fake_gpus(monkeypatch, (9, 0), count=2)
    assert engine.resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(ConfigError, match=r"train.device=cuda:2 but this machine has 2 GPUs \(cuda:0 to cuda:1\)"):
        engine.resolve_device("cuda:2")


def test_resume_gives_every_gpu_its_own_random_state(monkeypatch):
    from spikformer.train.state import restore_rng

    fake_gpus(monkeypatch, (9, 0), count=12)
    restored = []
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: restored.extend(int(s[0]) for s in states))
    tensors = {f"rng.cuda.{i}": torch.tensor([i], dtype=torch.uint8) for i in range(12)}
    restore_rng(tensors, {})
    assert restored == list(range(12))


def as_fake_cuda(model: torch.nn.Module, mode) -> torch.nn.Module:
    """``model`` with fake CUDA parameters and buffers (shapes and dtypes only) for tracing its CUDA path."""
    for module in model.modules():
        for store in (module._parameters, module._buffers):
            for key, value in store.items():
                if value is None:
                    continue
                with mode:
                    fake = mode.from_tensor(value.detach()).to("cuda")
                store[key] = torch.nn.Parameter(fake, value.requires_grad) if store is module._parameters else fake
    return model


@pytest.mark.parametrize("autocast_dtype", [None, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("name", ["spikformer_cifar_4_256", "spikformer_v2_8_512"])
def test_training_forward_traces_on_fake_cuda_tensors(monkeypatch, name, autocast_dtype):
    # The CUDA branches of the model (spike products, BatchNorm + LIF, spike packing) run on fake CUDA tensors;
    # packing's one data-dependent read answers "binary" (a fake tensor has no values).
    from torch._subclasses.fake_tensor import FakeTensorMode

    import spikformer
    from spikformer.fast import memory

    monkeypatch.setattr(memory, "_binary", lambda t: True)
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    model = spikformer.create_model(name, embed_dim=32, depth=1, num_heads=2, img_size=32, num_classes=10)
    model = as_fake_cuda(model.train(), mode)
    enabled, previous = torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda")
    try:
        with mode:
            x = torch.randn(2, 3, 32, 32, device="cuda")
            torch.set_autocast_enabled("cuda", autocast_dtype is not None)
            torch.set_autocast_dtype("cuda", autocast_dtype or previous)
            with memory.spike_packing():
                out = model(x)
    finally:
        torch.set_autocast_enabled("cuda", enabled)
        torch.set_autocast_dtype("cuda", previous)
    assert out.shape == (2, 10) and out.device.type == "cuda"
    assert out.dtype == (autocast_dtype or torch.float32)
