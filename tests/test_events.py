"""A running cell is never silent (dfmlbench.events): its stages and curve points stream to
<stem>.events.jsonl as they happen, its log names each stage and validation, and TensorBoard
output is checked before any cell runs."""

from __future__ import annotations

import importlib.util
import json

import pytest

from dfmlbench.selection import ModelSelection
from tests.cli_harness import assert_one_line_error, call

SMOKE = ("--suite", "quickstart", "--profile", "smoke", "--no-progress")


def test_stages_and_validations_stream_while_the_cell_runs(tmp_path, glyphs, monkeypatch):
    seen_during_fit = []
    original = ModelSelection.observe

    def observe(self, step):
        (events,) = tmp_path.glob("quickstart/smoke/free/*.events.jsonl")
        seen_during_fit.append([json.loads(line) for line in events.read_text().splitlines()])
        return original(self, step)

    monkeypatch.setattr(ModelSelection, "observe", observe)
    result = call("run", *SMOKE, "--method", "free", "--out", tmp_path)
    assert result.code == 0, result.err
    # at the first validation, the file already says the fit began, with its curve points so far
    first = seen_during_fit[0]
    assert [e["stage"] for e in first if e["kind"] == "stage"] == ["start", "pool", "fit"]
    assert any(e["kind"] == "curve" and e["name"] == "replay_tasks" for e in first)
    (path,) = tmp_path.glob("quickstart/smoke/free/*.events.jsonl")
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [e["stage"] for e in lines if e["kind"] == "stage"] == ["start", "pool", "fit", "meta-test", "recorded"]
    validations = [e for e in lines if e["kind"] == "curve" and e["name"] == "val_accuracy"]
    record = json.loads(path.with_name(path.name.replace(".events.jsonl", ".json")).read_text())
    assert [[v["step"], v["value"]] for v in validations] == record["curves"]["val_accuracy"]
    assert all(lines[i]["t"] <= lines[i + 1]["t"] for i in range(len(lines) - 1))
    log = path.with_name(path.name.replace(".events.jsonl", ".log")).read_text()
    assert "free glyphs 5w1s seed 0: fit method=free" in log and "val_accuracy" in log
    assert sum("val_accuracy" in line for line in result.err.splitlines()) == len(validations)


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is not None, reason="tensorboard is installed")
def test_tensorboard_output_without_the_package_is_one_line_before_any_cell(tmp_path):
    result = call("run", *SMOKE, "--method", "random", "--out", tmp_path, "--set", "runtime.tensorboard=true")
    assert_one_line_error(result, "runtime.tensorboard", "pip install tensorboard")
    assert not list(tmp_path.glob("quickstart/**/*.json"))


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="tensorboard is not installed")
def test_tensorboard_scalars_are_written_beside_the_record(tmp_path, glyphs):
    result = call("run", *SMOKE, "--method", "free", "--out", tmp_path, "--set", "runtime.tensorboard=true")
    assert result.code == 0, result.err
    (folder,) = tmp_path.glob("quickstart/smoke/free/*.tensorboard")
    assert list(folder.glob("events.out.tfevents.*"))
