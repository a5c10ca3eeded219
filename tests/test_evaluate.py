"""Fit once, evaluate many (dfmlbench.evaluate): a run saves its learners as safetensors beside
its records; `evaluate` re-tests them under another protocol without refitting, and `report`
with the same overrides reads those records like any other."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dfmlbench.learner_store import learner_path
from tests.cli_harness import assert_one_line_error, call

SMOKE = ("--suite", "quickstart", "--profile", "smoke", "--no-progress")
GRID = "protocol.lr_grid=[0.01, 0.1]"


def records(folder: Path, method: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(folder.glob(f"quickstart/smoke/{method}/*.json"))]


def episodes(folder: Path, record: dict) -> np.ndarray:
    return np.load(folder / "quickstart" / "smoke" / record["method"] / record["per_episode_file"])


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    out = tmp_path_factory.mktemp("fitted")
    result = call("run", *SMOKE, "--method", "average", "free", "random-reinit", "--out", out)
    assert result.code == 0, result.err
    return out


def test_runs_save_their_learners_except_per_episode_inits(fitted):
    (free,) = records(fitted, "free")
    assert free["learner_file"].endswith(".learner.safetensors") and free["learner_not_saved"] is None
    assert (fitted / "quickstart" / "smoke" / "free" / free["learner_file"]).read_bytes()[:8] != b"PK\x03\x04"
    (reinit,) = records(fitted, "random-reinit")
    assert reinit["learner_file"] is None and "per episode" in reinit["learner_not_saved"]


def test_the_same_protocol_gives_the_run_s_accuracies_back(fitted, tmp_path):
    result = call("evaluate", *SMOKE, "--method", "average", "free", "--runs", fitted, "--out", tmp_path)
    assert result.code == 0, result.err
    for method in ("average", "free"):
        (ran,), (evaluated,) = records(fitted, method), records(tmp_path, method)
        assert evaluated["evaluation_of"]["config_hash"] == ran["config_hash"]
        np.testing.assert_allclose(episodes(tmp_path, evaluated), episodes(fitted, ran), atol=1e-9)
        assert evaluated["extra_evaluations"].keys() == ran["extra_evaluations"].keys()
        assert evaluated["timings"]["recovery_seconds"] == ran["timings"]["recovery_seconds"]


def test_an_lr_grid_without_refitting_matches_a_run_with_it_and_reports(fitted, tmp_path):
    result = call("evaluate", *SMOKE, "--method", "average", "free", "--runs", fitted, "--out", fitted,
                  "--set", GRID)
    assert result.code == 0, result.err
    assert result.out.count("ran: ") == 2 and "not saved" not in result.out
    refit = call("run", *SMOKE, "--method", "average", "free", "--out", tmp_path, "--set", GRID)
    assert refit.code == 0, refit.err
    for method in ("average", "free"):
        evaluated = next(r for r in records(fitted, method) if "evaluation_of" in r)
        (ran,) = records(tmp_path, method)
        assert evaluated["meta_test_lr"]["selected_on"] == "meta-val"
        assert evaluated["meta_test_lr"]["chosen"] == ran["meta_test_lr"]["chosen"]
        assert evaluated["meta_test_lr"]["val_accuracy_by_lr"] == pytest.approx(
            ran["meta_test_lr"]["val_accuracy_by_lr"], abs=1e-9)
        np.testing.assert_allclose(episodes(fitted, evaluated), episodes(tmp_path, ran), atol=1e-9)
    again = call("evaluate", *SMOKE, "--method", "average", "--runs", fitted, "--set", GRID)
    assert "recorded: " in again.out  # done once, not twice
    report = call("report", "--suite", "quickstart", "--profile", "smoke", "--runs", fitted,
                  "--set", GRID, "--out", tmp_path / "report")
    assert report.code == 0, report.err
    table = (tmp_path / "report" / "table.csv").read_text()
    assert "Average" in table and "FREE" in table
    readme = (tmp_path / "report" / "README.md").read_text()  # names the command that wrote its records
    assert f"dfmlbench evaluate --suite quickstart --profile smoke '--set={GRID}' --runs {fitted}" in readme
    assert "dfmlbench run " not in readme


def test_learners_fitted_at_one_shot_test_at_five(fitted, tmp_path):
    result = call("evaluate", *SMOKE, "--method", "average", "--runs", fitted, "--out", tmp_path,
                  "--fit-shot", "1", "--set", "shots=[5]")
    assert result.code == 0, result.err
    (evaluated,) = records(tmp_path, "average")
    assert evaluated["shot"] == 5 and evaluated["evaluation_of"]["shot"] == 1


def test_cells_without_a_saved_learner_say_so(fitted, tmp_path):
    result = call("evaluate", *SMOKE, "--method", "random-reinit", "average", "--runs", fitted, "--out", tmp_path,
                  "--set", GRID)
    assert result.code == 0 and "not saved: random-reinit" in result.out
    assert_one_line_error(call("evaluate", *SMOKE, "--method", "random", "--runs", fitted, "--set", GRID),
                          "none of the 1 cell(s) has a saved learner")


def test_a_damaged_saved_learner_is_one_line(fitted, tmp_path):
    import shutil
    copy = tmp_path / "copy"
    shutil.copytree(fitted, copy)
    (free,) = [r for r in records(copy, "free") if "evaluation_of" not in r]
    learner_path(copy / "quickstart" / "smoke" / "free" / Path(free["learner_file"]).name.replace(
        ".learner.safetensors", "")).write_bytes(b"not safetensors")
    assert_one_line_error(call("evaluate", *SMOKE, "--method", "free", "--runs", copy, "--out", tmp_path / "new",
                               "--set", GRID),
                          "cannot read the saved learner", "run --force")
