"""`results`: every record as one table row, with the user's overrides as columns, read from the
record or (for records made before records kept them) worked out against the suite."""

from __future__ import annotations

import json

import pandas as pd

from dfmlbench.results import results_frame
from tests.cli_harness import assert_one_line_error, call

SMOKE = ("--suite", "quickstart", "--profile", "smoke", "--no-progress")


def test_results_list_every_record_with_its_overrides(tmp_path, glyphs):
    assert call("run", *SMOKE, "--method", "random", "--out", tmp_path, "--set", "protocol.lr=0.02").code == 0
    assert call("run", *SMOKE, "--method", "random", "--out", tmp_path).code == 0
    result = call("results", "--runs", tmp_path, "--csv", tmp_path / "all.csv")
    assert result.code == 0 and "2 record(s) written" in result.out
    frame = pd.read_csv(tmp_path / "all.csv")
    assert len(frame) == 2 and set(frame["method"]) == {"random"} and frame["config_hash"].nunique() == 2
    assert sorted(frame["protocol.lr"].fillna(0).tolist()) == [0, 0.02]
    assert set(frame["overrides_from"]) == {"record"}
    assert frame["accuracy"].between(0, 100).all() and set(frame["status"]) == {"ok"}
    printed = call("results", "--runs", tmp_path, "--suite", "quickstart")
    assert "protocol.lr" in printed.out and "2 record(s)" in printed.out


def test_older_records_get_their_overrides_from_the_suite(tmp_path, glyphs):
    assert call("run", *SMOKE, "--method", "random", "--out", tmp_path, "--set", "protocol.steps=3").code == 0
    path = next(tmp_path.glob("quickstart/smoke/random/*.json"))
    record = json.loads(path.read_text())
    del record["overrides"]  # as records were written before they kept them
    path.write_text(json.dumps(record))
    row = results_frame(tmp_path).iloc[0]
    assert row["overrides_from"] == "config vs suite" and row["protocol.steps"] == 3


def test_results_needs_a_folder(tmp_path):
    assert_one_line_error(call("results", "--runs", tmp_path / "nowhere"), "--runs", "is not a folder")
