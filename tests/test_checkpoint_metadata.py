"""Checkpoint metadata is part of what a checksum protects: every field of an own file's header (position,
optimizer and scheduler state, RNG states, config, metrics, and any field added later) is covered by
``metadata_sha256``, both checksums are mandatory, and a training state's values are validated before a resume
acts on them. Each test edits a real file, as a user with a text editor or a damaged disk would."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from test_checkpoint_safety import corrupt_training_state
from test_robustness_faults import tiny, write_config

from spikformer.checkpoint import (
    FORMAT_VERSION,
    load_model_from_checkpoint,
    read_checkpoint,
    read_checkpoint_metadata,
)
from spikformer.cli import main
from spikformer.errors import CheckpointError
from spikformer.train.state import load_training_state

REFUSED = r"(does not match the checksum stored in it|carries no|checkpoint format)"


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory) -> Path:
    """A finished two-epoch run of the tiny digits config: its last.safetensors and best.safetensors."""
    folder = tmp_path_factory.mktemp("metadata")
    config = write_config(folder / "tiny.yaml", tiny(folder / "run", "train.threads=1", "train.ema_decay=0.5"))
    assert main(["train", "--config", str(config)]) == 0
    return folder / "run"


def split(path: Path) -> tuple[dict, bytes]:
    """A safetensors file's header (parsed) and its data bytes."""
    data = path.read_bytes()
    length = int.from_bytes(data[:8], "little")
    return json.loads(data[8:8 + length]), data[8 + length:]


def join(path: Path, header: dict, data: bytes) -> Path:
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(len(text).to_bytes(8, "little") + text + data)
    return path


def edited(source: Path, target: Path, edit) -> Path:
    """A copy of ``source`` whose spikformer metadata document went through ``edit`` (in place); the tensor
    bytes and every other header entry are kept."""
    header, data = split(source)
    document = json.loads(header["__metadata__"]["spikformer"])
    edit(document)
    header["__metadata__"]["spikformer"] = json.dumps(document)
    return join(target, header, data)


def leaves(value, path=()):
    """``(path, value)`` of every leaf of a JSON document; of a list, its first and last item only."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from leaves(item, (*path, key))
    elif isinstance(value, list) and value:
        for index in sorted({0, len(value) - 1}):
            yield from leaves(value[index], (*path, index))
    else:
        yield path, value


def changed(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return 0.5 if not math.isfinite(value) else value * 2 + 1
    if isinstance(value, str):
        return value + "x"
    return 0  # None, an empty list or mapping


def set_at(document, path, value) -> None:
    for key in path[:-1]:
        document = document[key]
    document[path[-1]] = value


@pytest.mark.parametrize("name", ["last.safetensors", "best.safetensors"])
def test_an_edit_of_any_metadata_field_is_refused_as_a_checksum_mismatch(run_folder, tmp_path, name):
    source = run_folder / name
    document = read_checkpoint_metadata(source)
    paths = list(leaves(document))
    assert len(paths) > 40  # position, optimizer, scheduler, RNGs, config ... (the config alone has ~80)
    accepted = []
    for path, value in paths:
        target = edited(source, tmp_path / name, lambda doc, p=path, v=value: set_at(doc, p, changed(v)))
        try:
            read_checkpoint_metadata(target)
        except CheckpointError as error:
            assert "\n" not in str(error) and name in str(error)
        else:
            accepted.append(".".join(map(str, path)))
    assert not accepted, f"edited fields accepted: {accepted[:10]}"


@pytest.mark.parametrize("name", ["last.safetensors", "best.safetensors"])
def test_a_renamed_added_or_removed_metadata_field_is_refused(run_folder, tmp_path, name):
    source = run_folder / name
    for key in read_checkpoint_metadata(source):
        for edit in (lambda doc, k=key: doc.pop(k), lambda doc, k=key: doc.update({k + "_": doc.pop(k)})):
            with pytest.raises(CheckpointError, match=REFUSED):
                read_checkpoint_metadata(edited(source, tmp_path / name, edit))
    with pytest.raises(CheckpointError, match="does not match the checksum"):
        read_checkpoint_metadata(edited(source, tmp_path / name, lambda doc: doc.update(class_names=["a"])))


def test_the_other_safetensors_metadata_entries_are_covered_too(run_folder, tmp_path):
    header, data = split(run_folder / "best.safetensors")
    header["__metadata__"]["note"] = "added"
    with pytest.raises(CheckpointError, match="does not match the checksum"):
        read_checkpoint_metadata(join(tmp_path / "best.safetensors", header, data))


@pytest.mark.parametrize("key", ["tensor_sha256", "metadata_sha256"])
def test_a_checksum_is_mandatory_and_a_one_bit_flip_in_its_name_is_refused(run_folder, tmp_path, key):
    source = run_folder / "best.safetensors"
    flipped = chr(ord(key[0]) ^ 1) + key[1:]
    with pytest.raises(CheckpointError, match=rf"best.safetensors carries no {key}"):
        read_checkpoint(edited(source, tmp_path / "best.safetensors", lambda doc: doc.update({flipped: doc.pop(key)})))
    with pytest.raises(CheckpointError, match=rf"best.safetensors carries no {key}"):
        read_checkpoint(edited(source, tmp_path / "best.safetensors", lambda doc: doc.pop(key)))


def test_a_one_bit_flip_in_the_metadata_entrys_name_does_not_make_an_own_file_foreign(run_folder, tmp_path):
    header, data = split(run_folder / "best.safetensors")
    header["__metadata__"]["spikformes"] = header["__metadata__"].pop("spikformer")
    path = join(tmp_path / "best.safetensors", header, data)
    with pytest.raises(CheckpointError, match=r"best.safetensors is corrupt: .*spikformer metadata under another name"):
        read_checkpoint(path)


def test_a_file_of_an_earlier_development_format_is_refused_naming_the_format(run_folder, tmp_path):
    def as_format_2(doc):
        doc["version"] = 2
        doc.pop("metadata_sha256")

    path = edited(run_folder / "best.safetensors", tmp_path / "best.safetensors", as_format_2)
    with pytest.raises(CheckpointError, match=rf"checkpoint format 2 .* reads format {FORMAT_VERSION}.*train"):
        read_checkpoint(path)


@pytest.mark.parametrize("field, value", [
    (("position", "epoch"), 3), (("position", "epoch"), -3), (("position", "step"), 1),
    (("position", "best_top1"), 99.0),
    (("optimizer", "param_groups", 0, "lr"), 0.5), (("scheduler", "base_values", 0), 0.5),
])
def test_the_resume_of_an_edited_training_state_exits_2_naming_the_file(run_folder, tmp_path, field, value, capsys):
    out = tmp_path / "run"
    out.mkdir()
    for name in ("config.yaml", "metrics.csv"):
        (out / name).write_bytes((run_folder / name).read_bytes())
    edited(run_folder / "last.safetensors", out / "last.safetensors", lambda doc: set_at(doc, field, value))
    config = write_config(tmp_path / "tiny.yaml", tiny(out, "train.threads=1", "train.ema_decay=0.5",
                                                       "train.epochs=3"))
    assert main(["train", "--config", str(config), "--resume", "auto"]) == 2
    assert "last.safetensors is corrupt: its metadata" in capsys.readouterr().err
    assert (out / "metrics.csv").read_bytes() == (run_folder / "metrics.csv").read_bytes()  # no row deleted


@pytest.mark.parametrize("key, value", [("T", 3), ("img_size", 14)])
def test_a_weights_file_whose_stored_model_was_edited_is_refused(run_folder, tmp_path, key, value):
    path = edited(run_folder / "best.safetensors", tmp_path / "best.safetensors",
                  lambda doc: set_at(doc, ("config", "model", key), value))
    with pytest.raises(CheckpointError, match="best.safetensors is corrupt: its metadata"):
        load_model_from_checkpoint(path)


# --- values a resume acts on are validated (a file whose checksums were recomputed) ---------------------------


@pytest.mark.parametrize("spoil, named", [
    (lambda meta: meta["position"].update(epoch=-3), "position.epoch=-3"),
    (lambda meta: meta["position"].update(batch=-1), "position.batch=-1"),
    (lambda meta: meta["position"].update(step=-4), "position.step=-4"),
    (lambda meta: meta["position"].update(step=True), "position.step=True"),
    (lambda meta: meta["position"].update(best_top1=math.nan), "position.best_top1=nan"),
    (lambda meta: meta["position"].update(best_top1=math.inf), "position.best_top1=inf"),
    (lambda meta: meta["position"].update(best_epoch=1, best_top1=50.0), "position.best_epoch=1"),
    (lambda meta: meta["position"].update(best_epoch=0), "position.best_epoch=0"),
    (lambda meta: meta["position"].update(epoch_sums={"loss": math.nan}), "position.epoch_sums.loss=nan"),
    (lambda meta: meta["optimizer"]["param_groups"][0].update(lr=math.nan), "optimizer.param_groups.0.lr=nan"),
    (lambda meta: meta["optimizer"]["param_groups"][0].update(lr=-0.1), "optimizer.param_groups.0.lr=-0.1"),
    (lambda meta: meta["scheduler"]["base_values"].__setitem__(0, math.inf), "scheduler.base_values.0=inf"),
    (lambda meta: meta["scheduler"]["base_values"].__setitem__(0, -1.0), "scheduler.base_values.0=-1.0"),
    (lambda meta: meta.update(scaler={"scale": math.inf}), "scaler.scale=inf"),
], ids=["epoch", "batch", "step", "step bool", "best nan", "best inf", "best epoch ahead", "best without score",
        "sums", "lr nan", "lr negative", "base inf", "base negative", "scaler"])
def test_an_out_of_range_training_position_or_schedule_is_refused_on_resume(tmp_path, spoil, named):
    path, parts = corrupt_training_state(tmp_path, lambda tensors, meta: spoil(meta))
    with pytest.raises(CheckpointError, match=r"last.safetensors: its training state is incomplete or corrupt") as info:
        load_training_state(path, **parts, scaler=None, ema=None)
    assert named in str(info.value) and "\n" not in str(info.value)


def test_a_valid_training_state_still_resumes(tmp_path):
    path, parts = corrupt_training_state(tmp_path, lambda tensors, meta: None)
    position = load_training_state(path, **parts, scaler=None, ema=None)
    assert (position.epoch, position.batch, position.step) == (1, 0, 4)
    assert torch.equal(read_checkpoint(path)[0]["model.weight"], parts["model"].weight.detach())
