"""docs/benchmarks.md holds each script's table once: a new record replaces the table with its heading."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import benchutil  # noqa: E402


def test_a_record_replaces_the_table_with_the_same_heading_and_keeps_the_other_sections(tmp_path):
    page = tmp_path / "benchmarks.md"
    page.write_text("# Benchmarks\n\n## Current tables\n\n### LIF layer, cpu\n\nold\n\n"
                    "### Training memory, cpu\n\nkept\n\n## Other measurements\n\n## GPU check\n\ntheirs\n")
    benchutil.record("LIF layer, cpu", "cpu", "| new |\n|---|", path=page)
    benchutil.record("A new table", "cpu", "| added |\n|---|", path=page)
    text = page.read_text()
    assert text.count("### LIF layer, cpu") == 1 and "old" not in text and "| new |" in text
    assert text.index("### Training memory") < text.index("### A new table") < text.index("## Other measurements")
    assert text.endswith("## GPU check\n\ntheirs\n") and "kept" in text


def test_the_benchmarks_page_has_each_heading_once():
    headings = [line for line in (ROOT / "docs" / "benchmarks.md").read_text().splitlines() if line.startswith("#")]
    assert len(headings) == len(set(headings))
