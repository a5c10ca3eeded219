"""reports/FINDINGS.md quotes only numbers that a committed report holds: every accuracy or
difference with its CI ("55.24 ± 0.93", "-4.35 ± 0.81") and every p-value ("p=1.3e-23") must
appear in some report's tables or README (which themselves regenerate from their records,
tests/test_committed_reports.py)."""

from __future__ import annotations

import re
from pathlib import Path

REPORTS = Path(__file__).resolve().parents[1] / "reports"
FINDINGS = REPORTS / "FINDINGS.md"
WITH_CI = re.compile(r"[+-]?\d+\.\d+ ± \d+\.\d+")
P_VALUE = re.compile(r"\bp=([0-9][0-9.e+-]*[0-9])")


def report_text() -> str:
    files = [p for p in REPORTS.rglob("*") if p.suffix in {".md", ".txt"} and p != FINDINGS
             and "records" not in p.relative_to(REPORTS).parts]
    return "\n".join(p.read_text() for p in sorted(files))


def test_every_quoted_number_is_in_a_committed_report():
    findings, reports = FINDINGS.read_text(), report_text()
    quoted = WITH_CI.findall(findings) + P_VALUE.findall(findings)
    assert len(quoted) > 10  # the file quotes its evidence
    missing = [number for number in quoted if number not in reports]
    assert not missing, f"FINDINGS.md quotes numbers no committed report holds: {missing}"


def test_findings_has_no_placeholders_left():
    assert "TODO" not in FINDINGS.read_text()
