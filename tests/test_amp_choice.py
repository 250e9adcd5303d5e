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


def _machine(monkeypatch, flags: set[str], capability: str, onednn_cap: str | None = None) -> None:
    monkeypatch.setattr(engine, "cpu_flags", lambda: flags)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    if onednn_cap is None:
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    else:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", onednn_cap)


def test_native_bfloat16_needs_the_cpu_flag(monkeypatch):
    _machine(monkeypatch, {"avx2", "avx512f", "avx512_bf16"}, "AVX512")
    assert engine.cpu_has_native_bfloat16()
    _machine(monkeypatch, {"avx2", "amx_bf16"}, "AVX512")
    assert engine.cpu_has_native_bfloat16()
    _machine(monkeypatch, {"avx2", "avx512f"}, "AVX512")  # AVX-512 without its bfloat16 instructions
    assert not engine.cpu_has_native_bfloat16()
    _machine(monkeypatch, {"avx2"}, "AVX2")
    assert not engine.cpu_has_native_bfloat16()
    _machine(monkeypatch, set(), "DEFAULT")  # no /proc/cpuinfo
    assert not engine.cpu_has_native_bfloat16()


def test_an_avx2_machine_emulated_on_a_bf16_one_keeps_float32(monkeypatch):
    # ATEN_CPU_CAPABILITY=avx2 or ONEDNN_MAX_CPU_ISA=AVX2 run an AVX2 machine's code paths; amp=auto must then
    # choose what such a machine gets, float32, or the emulation would measure emulated bfloat16.
    bf16_cpu = {"avx2", "avx512f", "avx512_bf16"}
    _machine(monkeypatch, bf16_cpu, "AVX2")
    assert engine.autocast_dtype(torch.device("cpu"), "auto") is None
    for cap in ("AVX2", "avx2_vnni", "AVX512_CORE", " avx512_core_vnni "):
        _machine(monkeypatch, bf16_cpu, "AVX512", onednn_cap=cap)
        assert not engine.cpu_has_native_bfloat16(), cap
    for cap in ("AVX512_CORE_BF16", "AVX512_CORE_AMX", "ALL", ""):
        _machine(monkeypatch, bf16_cpu, "AVX512", onednn_cap=cap)
        assert engine.cpu_has_native_bfloat16(), cap

