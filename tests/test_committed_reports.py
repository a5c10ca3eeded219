"""Every committed report under reports/ regenerates from its committed records byte for
byte (tables; figures depend on plotting-library versions, so only their presence is checked)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from dfmlbench.cli import main

REPORTS = Path(__file__).resolve().parents[1] / "reports"
COMMAND = re.compile(r"^python -m dfmlbench (report .*)$", re.MULTILINE)


def committed_reports() -> list[Path]:
    """Report folders made by `report` (their README quotes the command); a folder may read the
    records of another (an lr-grid report reads the evaluations stored beside its suite's fits)."""
    return sorted(p.parent for p in REPORTS.glob("*/README.md") if COMMAND.search(p.read_text()))


@pytest.mark.parametrize("folder", committed_reports(), ids=lambda p: p.name)
def test_committed_report_regenerates_byte_for_byte(folder, tmp_path, monkeypatch):
    argv = shlex.split(COMMAND.search((folder / "README.md").read_text()).group(1))
    argv[argv.index("--out") + 1] = str(tmp_path / "out")
    monkeypatch.chdir(REPORTS.parent)  # the command's paths are relative to the repository
    assert main(argv) == 0
    for name in ("table.md", "table.tex", "table.csv", "paired.md"):
        if (folder / name).is_file():
            assert (tmp_path / "out" / name).read_bytes() == (folder / name).read_bytes(), name
    for png in folder.glob("*.png"):
        assert (tmp_path / "out" / png.name).is_file(), png.name
