"""The package list of pyproject.toml must name every sub-package, or a non-editable install
silently lacks modules (an editable install hides the omission)."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_subpackage_is_listed_in_pyproject():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "dfmlbench").rglob("__init__.py")}
    found.add("dfmlbench.methods")  # installed from methods/ through package-dir
    assert found == listed
