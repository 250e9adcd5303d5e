"""The config reference (docs/config.md, ``spikformer configs --keys``) is generated from the dataclasses."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from spikformer import cli
from spikformer.config import Config
from spikformer.config_reference import config_keys, reference_markdown

DOCS = Path(__file__).resolve().parents[1] / "docs" / "config.md"


def test_every_config_key_has_a_type_a_default_and_a_meaning():
    keys = {key.name: key for key in config_keys()}
    fields = {
        f"{section.name}.{field.name}"
        for section in dataclasses.fields(Config)
        for field in dataclasses.fields(section.default_factory)
    }
    assert set(keys) == fields
    assert [name for name, key in keys.items() if not key.meaning] == []
    assert keys["train.amp"].type == "str: auto / bf16 / fp16 / off / gpu_fp16"
    assert keys["optim.lr"].default == "0.0005"
    assert keys["model.T"].default == "null"


def test_docs_config_md_is_the_generated_reference():
    assert DOCS.read_text() == reference_markdown(), (
        "docs/config.md is out of date with src/spikformer/config.py; regenerate it with "
        "`spikformer configs --keys --markdown > docs/config.md`"
    )


def test_configs_keys_prints_every_key(capsys):
    assert cli.main(["configs", "--keys"]) == 0
    out = capsys.readouterr().out
    for key in config_keys():
        assert f"\n{key.name} " in out


def test_help_leads_to_the_config_keys():
    parser = cli.build_parser()
    train = parser._subparsers._group_actions[0].choices["train"]
    for text in (parser.format_help(), train.format_help()):
        assert "spikformer configs --keys" in " ".join(text.split())
