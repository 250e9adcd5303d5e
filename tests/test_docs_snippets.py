"""Every code block of README.md and docs/*.md runs as written, or says what it needs.

The convention (README.md, "Install"): a block whose first line is ``# needs: ...`` needs what it names, from
``NEEDS``; every other ``python`` or ``bash`` block is run here, in order, file by file, in an empty folder
(Python blocks of one file share their names, as a reader's session would; a ``bash`` block holds
``spikformer ...`` commands, run in-process, ``> FILE`` redirecting stdout). ``text`` blocks are output or
layouts. docs/tutorial.md is run by tests/test_tutorial.py.
"""

from __future__ import annotations

import contextlib
import logging
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
NEEDS = (
    "a clone",
    "a GPU",
    "a dataset",
    "the dev extra",
    "minutes",
    "a trained run",
    "files of your own",
    "several machines",
    "NeuroBench",
)
LANGUAGES = ("python", "bash", "text", "yaml")
RUN_ELSEWHERE = {"tutorial.md": "tests/test_tutorial.py"}
FENCE = re.compile(r"^```(\S*)[^\n]*\n(.*?)^```[ \t]*$", flags=re.S | re.M)
MARK = re.compile(r"#\s*needs:\s*(.*)")


@dataclass(frozen=True)
class Snippet:
    path: Path
    line: int
    language: str
    code: str

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    @property
    def needs(self) -> list[str] | None:
        first = self.code.lstrip("\n").split("\n", 1)[0].strip()
        match = MARK.fullmatch(first)
        return [need.strip() for need in match.group(1).split(",")] if match else None

    @property
    def runs_here(self) -> bool:
        return self.language in ("python", "bash") and self.needs is None and self.path.name not in RUN_ELSEWHERE


def snippets(path: Path) -> list[Snippet]:
    text = path.read_text()
    return [Snippet(path, text.count("\n", 0, m.start()) + 1, m.group(1), m.group(2)) for m in FENCE.finditer(text)]


def commands(snippet: Snippet) -> list[str]:
    """The block's command lines, backslash continuations joined, blank lines and comment lines left out."""
    joined = snippet.code.replace("\\\n", " ")
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]


def test_every_snippet_is_run_here_or_marked_with_what_it_needs():
    problems = []
    for path in FILES:
        for snippet in snippets(path):
            if snippet.language not in LANGUAGES:
                problems.append(f"{snippet.where}: a code block needs a language ({', '.join(LANGUAGES)})")
            for need in snippet.needs or []:
                if need not in NEEDS:
                    problems.append(f"{snippet.where}: '# needs: {need}' is none of: {', '.join(NEEDS)}")
            if snippet.runs_here and snippet.language == "bash":
                problems += [
                    f"{snippet.where}: {line!r} is not a spikformer command; mark the block '# needs: ...'"
                    for line in commands(snippet)
                    if not line.startswith("spikformer ")
                ]
    assert problems == []
    assert sum(s.runs_here for path in FILES for s in snippets(path)) >= 6


def test_every_spikformer_command_of_the_docs_parses_as_written_marked_or_not(capsys):
    from spikformer.cli import build_parser
    from spikformer.config import parse_override
    from spikformer.errors import ConfigError

    parser, refused = build_parser(), []
    for path in FILES:
        for snippet in snippets(path):
            if snippet.language != "bash":
                continue
            for line in commands(snippet):
                if not line.startswith("spikformer "):
                    continue
                argv = shlex.split(line, comments=True)[1:]
                argv = argv[: argv.index(">")] if ">" in argv else argv
                try:
                    for override in getattr(parser.parse_args(argv), "overrides", None) or []:
                        parse_override(override)
                except SystemExit as stop:
                    if stop.code:
                        refused.append(f"{snippet.where}: {line}")
                except ConfigError as error:
                    refused.append(f"{snippet.where}: {line}: {error}")
    assert refused == [], capsys.readouterr().err


def _run_command(line: str) -> None:
    from spikformer import cli

    argv = shlex.split(line, comments=True)[1:]
    target = None
    if ">" in argv:
        at = argv.index(">")
        argv, target = argv[:at], argv[at + 1]
    with contextlib.ExitStack() as stack:
        if target is not None:
            stack.enter_context(contextlib.redirect_stdout(stack.enter_context(open(target, "w"))))
        try:
            code = cli.main(argv)
        except SystemExit as stop:  # --version and --help end through argparse
            code = stop.code
    assert code == 0, f"`{line}` exited with {code}"


@pytest.mark.parametrize("path", [p for p in FILES if any(s.runs_here for s in snippets(p))], ids=lambda p: p.name)
def test_the_unmarked_snippets_of_each_page_run_as_written(path, tmp_path, monkeypatch):
    from spikformer.neurons import base

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(base, "_NEURONS", base._NEURONS.copy())  # a page may register a neuron of its own
    root = logging.getLogger()  # a page may configure logging: keep it from outliving the test
    monkeypatch.setattr(root, "handlers", list(root.handlers))
    monkeypatch.setattr(root, "level", root.level)
    namespace: dict = {}
    for snippet in snippets(path):
        if not snippet.runs_here:
            continue
        if snippet.language == "python":
            exec(compile(snippet.code, snippet.where, "exec"), namespace)
        else:
            for line in commands(snippet):
                _run_command(line)
