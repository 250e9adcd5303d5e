"""Checkpoints: loading never runs code, unreadable files are explained, writes are atomic."""

from __future__ import annotations

import argparse
import errno
import json
import os
import pickle
import re
import resource
import signal
import sys
from pathlib import Path

import pytest
import torch

from spikformer import checkpoint as ckpt
from spikformer.checkpoint import (
    load_checkpoint,
    load_model_from_checkpoint,
    read_checkpoint,
    read_model_state,
    save_model,
    write_checkpoint,
)
from spikformer.config import config_to_dict, load_config, read_yaml
from spikformer.errors import CheckpointError, ConfigError
from spikformer.models import create_model

TINY = {"embed_dim": 16, "depth": 1, "num_heads": 2}


def tiny_model(**overrides) -> torch.nn.Module:
    return create_model("spikformer_cifar_4_256", **{**TINY, **overrides})


class WritesMarker:
    """Unpickling this object would create ``path`` (a stand-in for any code an attacker wants to run)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


# --- legacy .pth files: weights only ----------------------------------------------------------------


@pytest.mark.parametrize("how", ["torch.save zip", "torch.save legacy", "plain pickle"])
def test_a_pth_whose_unpickling_would_run_code_is_refused_and_the_code_does_not_run(tmp_path, how):
    marker = tmp_path / "marker"
    payload = {"state_dict": tiny_model().state_dict(), "epoch": 3, "hook": WritesMarker(marker)}
    path = tmp_path / "evil.pth"
    if how == "torch.save zip":
        torch.save(payload, path)
    elif how == "torch.save legacy":
        torch.save(payload, path, _use_new_zipfile_serialization=False)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))
    # The same bytes unpickled without restrictions would write the marker: the attack is real.
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="refused to load .*evil.pth.*nothing from it was executed"):
        load_checkpoint(tiny_model(), path)
    assert not marker.exists()


def test_the_crafted_pickle_really_runs_code_when_loaded_unsafely(tmp_path):
    # The control for the test above: without weights_only the same file does write the marker.
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pth"
    torch.save({"hook": WritesMarker(marker)}, path)
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_a_timm_style_training_checkpoint_with_argparse_args_loads(tmp_path):
    model = tiny_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    optimizer.step()
    args = argparse.Namespace(model="spikformer", lr=5e-4, epochs=300, mixup=0.5, input_size=(3, 32, 32),
                              resume="", amp=True, mean=None)
    torch.save({"epoch": 299, "arch": "spikformer", "state_dict": model.state_dict(),
                "optimizer": optimizer.state_dict(), "version": 2, "args": args, "metric": 95.19},
               tmp_path / "model_best.pth.tar")
    fresh = tiny_model()
    load_checkpoint(fresh, tmp_path / "model_best.pth.tar")
    for key, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key


def test_a_yaml_config_with_a_python_tag_is_refused_and_builds_nothing(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.yaml"
    path.write_text(f"train:\n  out_dir: !!python/object/apply:pathlib.Path.touch [!!python/object/apply:"
                    f"pathlib.Path ['{marker}']]\n")
    with pytest.raises(ConfigError, match="uses a YAML tag that would build a Python object"):
        read_yaml(path)
    assert not marker.exists()


def test_a_python_tag_in_an_override_is_kept_as_plain_text(tmp_path):
    marker = tmp_path / "marker"
    config = load_config(None, [f"train.out_dir=!!python/object/apply:os.system ['touch {marker}']"])
    assert config.train.out_dir.startswith("!!python") and not marker.exists()


# --- unreadable and mismatched checkpoints ---------------------------------------------------------


def corrupt_variants(tmp_path: Path) -> dict[str, Path]:
    model = tiny_model()
    save_model(tmp_path / "good.safetensors", model, {})
    torch.save({"state_dict": model.state_dict()}, tmp_path / "good.pth")
    good_st = (tmp_path / "good.safetensors").read_bytes()
    good_pth = (tmp_path / "good.pth").read_bytes()
    files = {
        "safetensors cut in half": good_st[: len(good_st) // 2],
        "safetensors cut to 5 bytes": good_st[:5],
        "pth cut in half": good_pth[: len(good_pth) // 2],
        "random bytes": bytes(range(256)) * 8,
        "a text file": b"epoch,loss\n1,0.5\n",
        "empty": b"",
        "a YAML config": b"model:\n  name: spikformer_cifar_4_256\n",
    }
    paths = {}
    for i, (name, data) in enumerate(files.items()):
        for suffix in (".safetensors", ".pth"):
            path = tmp_path / f"file{i}{suffix}"
            path.write_bytes(data)
            paths[f"{name} ({suffix})"] = path
    paths["a folder"] = tmp_path
    paths["a missing file"] = tmp_path / "missing.safetensors"
    return paths


def test_truncated_or_foreign_files_are_explained_never_a_traceback(tmp_path):
    for what, path in corrupt_variants(tmp_path).items():
        for load in (lambda p: load_checkpoint(tiny_model(), p), load_model_from_checkpoint):
            with pytest.raises(CheckpointError) as info:
                load(path)
            message = str(info.value)
            assert str(path) in message, (what, message)
            assert any(word in message for word in ("not a readable", "does not exist", "is empty",
                                                    "is a directory", "no model state dict")), (what, message)


def test_a_checkpoint_of_another_variant_lists_missing_unexpected_and_mismatched_shapes(tmp_path):
    save_model(tmp_path / "deep.safetensors", tiny_model(depth=2, embed_dim=32), {})
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tiny_model(), tmp_path / "deep.safetensors")
    message = str(info.value)
    assert "unexpected keys: blocks.1." in message
    assert "shape mismatches: patch_embed.stages.0.conv.weight: checkpoint [4, 3, 3, 3] vs model [2, 3, 3, 3]" \
        in message
    assert "Build the same variant" in message
    save_model(tmp_path / "shallow.safetensors", tiny_model(), {})
    with pytest.raises(CheckpointError, match=r"missing keys: blocks\.1\."):
        load_checkpoint(tiny_model(depth=2), tmp_path / "shallow.safetensors")


def test_a_checkpoint_whose_stored_config_is_invalid_names_the_file_and_the_fix(tmp_path):
    config = config_to_dict(load_config(None, [f"model.{k}={v}" for k, v in TINY.items()]))
    save_model(tmp_path / "ok.safetensors", tiny_model(), config)
    config["train"]["nan_policy"] = "ignore"
    save_model(tmp_path / "bad.safetensors", tiny_model(), config)
    with pytest.raises(ConfigError, match=r"bad.safetensors: train.nan_policy must be one of.*override"):
        load_model_from_checkpoint(tmp_path / "bad.safetensors")
    model, _ = load_model_from_checkpoint(tmp_path / "bad.safetensors", ["train.nan_policy=skip"])
    assert sum(p.numel() for p in model.parameters()) > 0
    write_checkpoint(tmp_path / "list.safetensors", {"model.x": torch.zeros(1)}, {"config": [1, 2]})
    with pytest.raises(ConfigError, match="must be a mapping of sections"):
        load_model_from_checkpoint(tmp_path / "list.safetensors")


# --- atomic writes -----------------------------------------------------------------------------------


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_a_failing_rename_leaves_the_previous_checkpoint_intact_and_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "last.safetensors"
    save_model(path, tiny_model(), None, epoch=1)
    before = path.read_bytes()

    def failing_replace(src, dst):
        raise OSError(errno.EIO, "simulated I/O error")

    monkeypatch.setattr(ckpt.os, "replace", failing_replace)
    with pytest.raises(OSError, match="could not write checkpoint .*the previous file, if any, is intact"):
        save_model(path, tiny_model(embed_dim=32), None, epoch=2)
    assert path.read_bytes() == before and leftovers(tmp_path) == []


def test_a_write_that_fails_half_way_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "last.safetensors"
    save_model(path, tiny_model(), None, epoch=1)
    before = path.read_bytes()
    real_fdopen = os.fdopen

    class HalfWriter:
        def __init__(self, handle):
            self.handle = handle

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

        def write(self, data):
            self.handle.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.handle, name)

    monkeypatch.setattr(ckpt.os, "fdopen", lambda fd, mode: HalfWriter(real_fdopen(fd, mode)))
    with pytest.raises(OSError, match="No space left on device"):
        save_model(path, tiny_model(embed_dim=32), None, epoch=2)
    assert path.read_bytes() == before and leftovers(tmp_path) == []
    assert read_checkpoint(path)[1]["epoch"] == 1


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_FSIZE semantics are Linux's")
def test_a_full_disk_mid_write_leaves_the_previous_checkpoint_intact(tmp_path):
    # A real failing write, no mocks: the file-size limit makes the kernel refuse bytes past 64 KiB (EFBIG),
    # as a full disk would (ENOSPC); the new checkpoint is larger than that, the old one smaller.
    path = tmp_path / "last.safetensors"
    save_model(path, tiny_model(), None, epoch=1)
    before = path.read_bytes()
    assert len(before) < 64 * 1024
    big = tiny_model(embed_dim=64)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))
    try:
        with pytest.raises(OSError, match="could not write checkpoint") as info:
            save_model(path, big, None, epoch=2)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous_handler)
    assert info.value.errno == errno.EFBIG
    assert path.read_bytes() == before and leftovers(tmp_path) == []
    state, _ = read_model_state(path)
    assert state["head.weight"].shape == (10, 16)


# --- a checkpoint is data, not instructions -----------------------------------------------------------


def raw_safetensors(path: Path, header: dict, data: bytes = b"") -> Path:
    """A file in the safetensors layout with exactly this header (which may lie about the data)."""
    text = json.dumps(header).encode()
    path.write_bytes(len(text).to_bytes(8, "little") + text + data)
    return path


def test_a_weights_file_is_a_plain_state_dict_that_safetensors_and_timm_read_directly(tmp_path):
    import timm
    from safetensors.torch import load_file

    model = tiny_model()
    config = config_to_dict(load_config(None, [f"model.{k}={v}" for k, v in TINY.items()]))
    save_model(tmp_path / "best.safetensors", model, config)
    state = load_file(str(tmp_path / "best.safetensors"))
    assert set(state) == set(model.state_dict())  # no "model." prefix
    fresh = tiny_model()
    fresh.load_state_dict(state, strict=True)
    via_timm = timm.create_model("spikformer_cifar_4_256", checkpoint_path=str(tmp_path / "best.safetensors"),
                                 **TINY)
    for key, value in model.state_dict().items():
        assert torch.equal(via_timm.state_dict()[key], value), key
    _, metadata = read_checkpoint(tmp_path / "best.safetensors")
    assert metadata["config"]["model"]["embed_dim"] == 16  # the config travels in the metadata


def test_a_weights_file_written_before_the_plain_layout_still_loads(tmp_path):
    model = tiny_model()
    config = config_to_dict(load_config(None, [f"model.{k}={v}" for k, v in TINY.items()]))
    # Version 1 weights files: every key under "model.", no layout, no checksum.
    write_checkpoint(tmp_path / "old.safetensors", {f"model.{k}": v for k, v in model.state_dict().items()},
                     {"config": config, "kind": "weights"})
    state, _ = read_model_state(tmp_path / "old.safetensors")
    assert set(state) == set(model.state_dict())
    loaded, _ = load_model_from_checkpoint(tmp_path / "old.safetensors")
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())


def test_a_checkpoint_with_flipped_tensor_bytes_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "best.safetensors"
    save_model(path, tiny_model())
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x40  # one bit of the last tensor's bytes: still a well-formed file
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"best.safetensors is corrupt: its tensor bytes do not match"):
        load_checkpoint(tiny_model(), path)


def test_a_header_that_does_not_fit_the_file_is_refused_before_any_tensor_is_read(tmp_path, monkeypatch):
    # A sparse 2 GiB file whose head looks like safetensors: its one tensor claims more bytes than there are.
    path = raw_safetensors(tmp_path / "big.safetensors",
                           {"w": {"dtype": "F32", "shape": [2**30], "data_offsets": [0, 2**32]}})
    with path.open("r+b") as handle:
        handle.truncate(2**31)

    def never(*args, **kwargs):
        raise AssertionError("tensor bytes were read before the header was validated")

    monkeypatch.setattr(Path, "read_bytes", never)
    monkeypatch.setattr(ckpt, "safetensors_load_file", never, raising=False)
    with pytest.raises(CheckpointError, match=r"big.safetensors is not a readable safetensors checkpoint.*offsets"):
        read_checkpoint(path)


@pytest.mark.parametrize("header, message", [
    ({"w": {"dtype": "Q9", "shape": [1], "data_offsets": [0, 4]}}, "unknown dtype"),
    ({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, "invalid shape"),
    ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, "does not match its 4 bytes"),
    ({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
      "v": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, "overlap or leave gaps"),
    ({"w": "F32"}, "not described by dtype, shape and data_offsets"),
    ({"__metadata__": {"spikformer": 5}}, "does not map names to strings"),
])
def test_a_header_that_lies_about_its_tensors_is_refused_with_one_line(tmp_path, header, message):
    path = raw_safetensors(tmp_path / "lie.safetensors", header, b"\0" * 4)
    with pytest.raises(CheckpointError, match=message) as info:
        read_checkpoint(path)
    assert "\n" not in str(info.value) and "lie.safetensors" in str(info.value)


def test_deeply_nested_metadata_json_is_refused_not_a_recursion_error(tmp_path):
    deep = "[" * 100_000 + "]" * 100_000
    path = raw_safetensors(tmp_path / "deep.safetensors", {"__metadata__": {"spikformer": deep}})
    with pytest.raises(CheckpointError, match=r"deep.safetensors: the checkpoint's metadata JSON nests 100000 levels"):
        read_checkpoint(path)


def test_a_fifo_or_device_is_refused_at_once_instead_of_hanging(tmp_path):
    fifo = tmp_path / "ckpt.safetensors"
    os.mkfifo(fifo)
    previous = signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(TimeoutError("open() hung")))
    signal.alarm(10)
    try:
        for path in (fifo, Path("/dev/zero")):
            for load in (read_checkpoint, lambda p: load_checkpoint(tiny_model(), p)):
                with pytest.raises(CheckpointError, match="is not a regular file"):
                    load(path)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool])
def test_weights_stored_as_integers_or_booleans_are_refused_not_cast(tmp_path, dtype):
    state = tiny_model().state_dict()
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name] = state[name].to(dtype)
    write_checkpoint(tmp_path / "forged.safetensors", state, {"layout": "state_dict"})
    with pytest.raises(CheckpointError, match=rf"wrong kind of dtype: {re.escape(name)} \({dtype}"):
        load_checkpoint(tiny_model(), tmp_path / "forged.safetensors")


def stored(tmp_path, **sections) -> Path:
    config = config_to_dict(load_config(None, [f"model.{k}={v}" for k, v in TINY.items()]))
    for section, values in sections.items():
        config[section].update(values)
    save_model(tmp_path / "stored.safetensors", tiny_model(), config)
    return tmp_path / "stored.safetensors"


def test_a_stored_config_cannot_choose_where_to_write_or_how_many_workers_to_start(tmp_path):
    path = stored(tmp_path, data={"cache_dir": str(tmp_path / "planted"), "num_workers": 32, "download": True},
                  train={"out_dir": "/etc", "resume": "/etc/passwd", "threads": 512})
    _, config = load_model_from_checkpoint(path)
    assert config.data.cache_dir is None and config.data.download is False
    assert config.train.out_dir == "runs/default" and config.train.resume is None and config.train.threads is None
    assert config.data.num_workers == ckpt.local_worker_limit() <= 8
    # The user's own choices, given as overrides, win.
    _, config = load_model_from_checkpoint(path, [f"data.cache_dir={tmp_path / 'mine'}", "data.num_workers=3"])
    assert config.data.cache_dir == str(tmp_path / "mine") and config.data.num_workers == 3


def test_eval_of_a_checkpoint_starts_no_more_workers_than_the_machine_allows(tmp_path, monkeypatch, capsys):
    import spikformer.data as data
    from spikformer.cli import main

    path = stored(tmp_path, data={"num_workers": 32, "cache_dir": str(tmp_path / "planted")},
                  model={"img_size": 8, "patch_size": 4, "in_chans": 1, "num_classes": 10})
    save_model(path, tiny_model(img_size=8, patch_size=4, in_chans=1, num_classes=10),
               read_checkpoint(path)[1]["config"])
    # The run loop binds build_loader at its import: import it before the patch, or it would keep the patch
    # for every test after this one in the process.
    import spikformer.train.loop  # noqa: F401

    asked = []
    real = data.build_loader
    monkeypatch.setattr(data, "build_loader", lambda *a, **k: asked.append(k["num_workers"]) or real(
        *a, **{**k, "num_workers": 0}))
    assert main(["eval", "--checkpoint", str(path), "train.progress=false"]) == 0
    assert asked == [ckpt.local_worker_limit()]
    assert not (tmp_path / "planted").exists()


@pytest.mark.parametrize("key, value", [("model.T", 10**9), ("model.embed_dim", 10**6), ("model.depth", 10**5),
                                        ("data.eval_batch_size", 10**8)])
def test_sizes_a_stored_config_asks_for_are_bounded_with_one_line(tmp_path, key, value):
    section, name = key.split(".")
    path = stored(tmp_path, **{section: {name: value}})
    with pytest.raises(CheckpointError, match=rf"asks for {re.escape(key)}={value}, more than the .* override"
                                              rf" {re.escape(key)}=N") as info:
        load_model_from_checkpoint(path)
    assert "\n" not in str(info.value)


def test_a_stored_width_that_the_weights_do_not_have_fails_before_allocating(tmp_path, monkeypatch):
    path = stored(tmp_path, model={"embed_dim": 64})  # weights of width 16 under a config of width 64
    import spikformer.models as models

    built = []
    real = models.build_model
    monkeypatch.setattr(models, "build_model", lambda cfg: built.append(torch.empty(0).device) or real(cfg))
    with pytest.raises(CheckpointError, match=r"stored.safetensors does not fit the model(.|\n)*shape mismatches"):
        load_model_from_checkpoint(path)
    assert [d.type for d in built] == ["meta"]  # only the meta-device model was ever built


def test_a_refused_pickle_never_repeats_torchs_advice_to_load_it_unsafely(tmp_path):
    class RunsShell:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'ran'}",))

    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps({"state_dict": {}, "x": RunsShell()}, protocol=2))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tiny_model(), path)
    message = str(info.value)
    assert message.startswith(f"refused to load {path}") and "posix.system" in message
    assert "weights_only" not in message and "trusted source" not in message
    assert not (tmp_path / "ran").exists()


def corrupt_training_state(tmp_path: Path, spoil) -> tuple[Path, dict]:
    from spikformer.config import Config
    from spikformer.train.optim import build_optimizer, build_scheduler
    from spikformer.train.state import Position, save_training_state

    model = torch.nn.Linear(2, 2)
    parts = {"model": model, "optimizer": build_optimizer(model, Config().optim)}
    parts["scheduler"] = build_scheduler(parts["optimizer"], Config().optim, 2, 4)
    path = tmp_path / "last.safetensors"
    save_training_state(path, **parts, scaler=None, ema=None, position=Position(1, 0, 4),
                        config=config_to_dict(Config()))
    tensors, meta = read_checkpoint(path)
    spoil(tensors, meta)
    write_checkpoint(path, tensors, {k: v for k, v in meta.items() if k not in ("format", "version", "tensor_sha256")})
    return path, parts


@pytest.mark.parametrize("spoil", [
    lambda tensors, meta: meta.pop("position"),
    lambda tensors, meta: meta.pop("optimizer"),
    lambda tensors, meta: meta["position"].update(epoch="three", unknown=1),
    lambda tensors, meta: tensors.update({"rng.torch": torch.zeros(7, dtype=torch.uint8)}),
    lambda tensors, meta: meta["rng"].update(python=[3, [1, 2], None]),
    lambda tensors, meta: meta["optimizer"].update(param_groups="all"),
], ids=["no position", "no optimizer", "odd position", "rng size", "python rng", "param groups"])
def test_corrupt_training_metadata_on_resume_is_one_line_naming_the_file(tmp_path, spoil):
    from spikformer.train.state import load_training_state

    path, parts = corrupt_training_state(tmp_path, spoil)
    with pytest.raises(CheckpointError, match=r"last.safetensors: its training state is incomplete or corrupt") as info:
        load_training_state(path, **parts, scaler=None, ema=None)
    assert "\n" not in str(info.value)
