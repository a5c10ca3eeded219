"""Calling the CLI in-process and checking its one-line errors: shared by the CLI tests and the
bad-input battery (`tests/test_bad_input*.py`)."""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path

from dfmlbench.cli import main


@dataclass
class Result:
    code: int
    out: str
    err: str


def call(*argv: str | Path) -> Result:
    """`main(argv)` with its stdout and stderr captured (usable from module-scoped fixtures)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return Result(code, out.getvalue(), err.getvalue())


def assert_one_line_error(result: Result, *fragments: str) -> str:
    """Exit code 2, exactly one stderr line starting `dfmlbench: error: `, no traceback, and
    every fragment in that line."""
    assert result.code == 2, (result.code, result.err)
    lines = result.err.splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith("dfmlbench: error: "), lines[0]
    assert "Traceback" not in result.err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]
