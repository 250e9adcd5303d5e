import torch

from spikformer.train import engine


def test_auto_amp_on_a_cpu_without_native_bfloat16_stays_in_float32(monkeypatch):
    monkeypatch.setattr(engine, "cpu_has_native_bfloat16", lambda: False)
    assert engine.autocast_dtype(torch.device("cpu"), "auto") is None


def test_auto_amp_on_a_cpu_with_native_bfloat16_uses_it(monkeypatch):
    monkeypatch.setattr(engine, "cpu_has_native_bfloat16", lambda: True)
    assert engine.autocast_dtype(torch.device("cpu"), "auto") is torch.bfloat16


def test_explicit_amp_choices_are_honoured_on_the_cpu():
    cpu = torch.device("cpu")
    assert engine.autocast_dtype(cpu, "bf16") is torch.bfloat16
    assert engine.autocast_dtype(cpu, "fp16") is torch.float16
    assert engine.autocast_dtype(cpu, "off") is None
