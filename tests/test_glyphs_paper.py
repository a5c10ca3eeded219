"""glyphs-paper (issue 17, item 3): a dataset with settings (`dataset_settings`: render seed and
difficulty) that are part of every cell's identity, and the calibration that fixed its
difficulty by the rule of docs/teacher-regime.md. The variant is shrunk here (8 images a class)
so that rendering takes a second; the sizes are the only thing the tests change."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import dfmlbench.data as data
from cli_harness import assert_one_line_error, call
from dfmlbench import glyphs_calibration as calibration
from dfmlbench.config import load_suite, resolve
from dfmlbench.data import dataset_options, load_dataset
from dfmlbench.data import glyphs_dataset
from dfmlbench.planning import expand_cells
from dfmlbench.pool import PoolSpec, planned_pool_key

REPORT = Path(__file__).resolve().parents[1] / "reports" / "glyphs-paper-calibration"


@pytest.fixture
def small_variant(monkeypatch):
    monkeypatch.setattr(glyphs_dataset, "GLYPHS_PAPER", glyphs_dataset.GlyphsVariant("glyphs-paper", 100, 8))
    monkeypatch.setattr(data, "_loaded", {})  # no full-size dataset from another test is reused


def test_settings_default_and_are_checked():
    assert dataset_options("glyphs-paper") == {"seed": 0, "difficulty": glyphs_dataset.PAPER_DIFFICULTY}
    assert dataset_options("glyphs-paper", {"seed": 7}) == {"seed": 7, "difficulty": glyphs_dataset.PAPER_DIFFICULTY}
    assert dataset_options("omniglot") == {}


@pytest.mark.parametrize("setting, expected", [
    ("dataset_settings.glyphs-paper.sed=3", "did you mean 'seed'?"),
    ("dataset_settings.omniglot.seed=3", "dataset 'omniglot' takes no settings"),
    ("dataset_settings.glyphs-paper.difficulty=0", "must be a number in (0, 10]"),
    ("dataset_settings.glyphs-paper.seed=-1", "must be an integer >= 0"),
    ("dataset_settings.glyphs-paper=3", "must name a setting"),
])
def test_bad_dataset_settings_stop_in_one_line(setting, expected, tmp_path):
    result = call("plan", "--suite", "table2", "--profile", "smoke", "--set", "datasets=[glyphs-paper]",
                  "--set", setting, "--out", tmp_path)
    assert_one_line_error(result, expected)


def test_the_settings_are_in_the_cell_identity_only_where_a_dataset_takes_them():
    def cells(*assignments):
        return expand_cells(resolve(load_suite("table2"), "smoke", [("methods", ["average"]), *assignments]))

    (plain,) = cells()
    assert "dataset_settings" not in plain.config  # hashes of datasets without settings are unchanged
    (paper,) = cells(("datasets", ["glyphs-paper"]))
    (other_seed,) = cells(("datasets", ["glyphs-paper"]), ("dataset_settings.glyphs-paper.seed", 5))
    assert paper.config["dataset_settings"] == {"seed": 0, "difficulty": glyphs_dataset.PAPER_DIFFICULTY}
    assert other_seed.config["dataset_settings"]["seed"] == 5 and other_seed.hash != paper.hash


def test_the_render_seed_gives_other_images_and_so_another_pool(small_variant):
    first, again = load_dataset("glyphs-paper"), load_dataset("glyphs-paper", options={"seed": 0})
    other = load_dataset("glyphs-paper", options={"seed": 1})
    assert first is again and len(first.images) == 800 and first.splits["test"] == list(range(80, 100))
    assert first.fingerprint() != other.fingerprint()
    spec = PoolSpec.from_config(resolve(load_suite("glyphs-calibration"), "smoke", [])["pool"])
    assert planned_pool_key(first, spec) != planned_pool_key(other, spec)
    assert "seed 1" in other.notes


def _rung(difficulty: float, teachers: float, random: float) -> dict:
    return {"difficulty": difficulty, "render_seed": 0, "profile": "paper",
            "teachers": {"count": 10, "heldout": [teachers], "heldout_mean": teachers, "heldout_min": teachers,
                         "heldout_max": teachers, "train_seconds": 600.0},
            "regime": {"steps_mean": 1140, "norm_ratio_mean": 1.5, "pairwise_cosine_mean": 0.01},
            "random": {"mean": random, "ci95": 1.0, "episodes": {"count": 600}, "record": "r.json"}}


def test_the_rule_takes_the_smallest_passing_rung_and_never_skips_one():
    saturated, passing, too_easy_meta = _rung(1.0, 97.0, 50.0), _rung(1.5, 85.0, 45.0), _rung(2.0, 70.0, 60.0)
    assert calibration.choose([saturated, passing, _rung(2.0, 70.0, 40.0)])["difficulty"] == 1.5
    assert calibration.choose([saturated, too_easy_meta]) is None  # 1.5 was not measured: undecided
    assert calibration.choose([_rung(1.0, 89.99, 55.0)])["difficulty"] == 1.0  # bounds are inclusive
    assert not calibration.passes(_rung(1.0, 59.0, 40.0)) and not calibration.passes(too_easy_meta)
    text, summary = calibration.report([passing, saturated])
    assert summary["chosen_difficulty"] == 1.5 and text.index("| 1 |") < text.index("| 1.5 |")
    assert "Chosen: difficulty 1.5" in text


def test_calibration_measures_rungs_in_order_resumes_and_rebuilds_its_report(small_variant, monkeypatch, tmp_path):
    monkeypatch.setattr(calibration, "LADDER", (1.0, 2.0))
    out = tmp_path / "cal"
    assert calibration.main(["--out", str(out), "--profile", "smoke", "--all"]) == 0
    rungs = {p.name: json.loads(p.read_text()) for p in (out / "rungs").glob("*.json")}
    assert set(rungs) == {"d1.json", "d2.json"}
    for rung in rungs.values():  # what the rule reads, measured: 3 smoke teachers, Random on 20 episodes
        assert rung["teachers"]["count"] == 3 and 0 <= rung["teachers"]["heldout_mean"] <= 100
        assert rung["random"]["episodes"]["count"] == 20 and (out / "records" / rung["random"]["record"]).is_file()
        assert rung["regime"]["steps_mean"] > 0
    assert rungs["d1.json"]["dataset_fingerprint"] != rungs["d2.json"]["dataset_fingerprint"]
    report = (out / "calibration.md").read_bytes()
    stamps = {p: p.stat().st_mtime_ns for p in (out / "rungs").glob("*.json")}
    assert calibration.main(["--out", str(out), "--profile", "smoke", "--all"]) == 0  # nothing re-measured
    assert stamps == {p: p.stat().st_mtime_ns for p in (out / "rungs").glob("*.json")}
    (out / "calibration.md").unlink()
    assert calibration.main(["--out", str(out), "--report-only"]) == 0
    assert (out / "calibration.md").read_bytes() == report
    code = calibration.main(["--out", str(out), "--profile", "smoke", "--seed", "4"])
    assert code == 2  # rungs of another render seed are never mixed in


def test_the_committed_calibration_regenerates_and_fixed_the_difficulty():
    if not (REPORT / "calibration.json").is_file():
        pytest.fail("reports/glyphs-paper-calibration is missing: run python -m dfmlbench.glyphs_calibration")
    rungs = calibration.read_rungs(REPORT)
    text, summary = calibration.report(rungs)
    assert (REPORT / "calibration.md").read_text(encoding="utf-8") == text
    assert json.loads((REPORT / "calibration.json").read_text(encoding="utf-8")) == json.loads(
        json.dumps(summary, sort_keys=True))
    assert summary["chosen_difficulty"] == glyphs_dataset.PAPER_DIFFICULTY
    assert all(r["profile"] == "paper" and r["random"]["episodes"]["count"] == 600 for r in rungs)
