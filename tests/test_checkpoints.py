"""The checkpoint service (dfmlbench.checkpoint): FREE, PURER and BiDf-MKD, killed mid-cell and
run again, resume from their last checkpoint and record what an uninterrupted run records."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dfmlbench.checkpoint import Checkpoints
from dfmlbench.method import RECOVERY_CURVE, TRAIN_CURVE
from tests.cli_harness import call

SMOKE = ("--suite", "quickstart", "--profile", "smoke", "--no-progress", "--set", "runtime.checkpoint_minutes=0")
UNIT = {"free": "epoch", "purer": "iteration", "bidf-mkd": "meta_iteration"}


def the_record(out: Path, method: str) -> tuple[dict, np.ndarray]:
    (path,) = out.glob(f"quickstart/smoke/{method}/*.json")
    record = json.loads(path.read_text())
    return record, np.load(path.parent / record["per_episode_file"])


@pytest.mark.parametrize("method", ["free", "purer", "bidf-mkd"])
def test_a_killed_cell_resumes_and_records_what_an_uninterrupted_one_does(method, tmp_path, glyphs, monkeypatch):
    assert call("run", *SMOKE, "--method", method, "--out", tmp_path / "whole").code == 0
    expected, expected_episodes = the_record(tmp_path / "whole", method)

    original, saves = Checkpoints.save, []

    def killed_after_the_second_save(self, unit, training):
        original(self, unit, training)
        saves.append(unit)
        if len(saves) == 2:
            raise KeyboardInterrupt  # as a preempted job: the checkpoint is on disk, the cell is not done

    monkeypatch.setattr(Checkpoints, "save", killed_after_the_second_save)
    assert call("run", *SMOKE, "--method", method, "--out", tmp_path / "killed").code == 130
    assert list((tmp_path / "killed").glob(f"quickstart/smoke/{method}/*.artifacts/checkpoint.pt"))
    assert not list((tmp_path / "killed").glob(f"quickstart/smoke/{method}/*.json"))
    monkeypatch.setattr(Checkpoints, "save", original)

    assert call("run", *SMOKE, "--method", method, "--out", tmp_path / "killed").code == 0
    resumed, resumed_episodes = the_record(tmp_path / "killed", method)
    assert resumed["method_info"].pop(f"resumed_from_{UNIT[method]}") == saves[-1]
    assert resumed["config_hash"] == expected["config_hash"]
    np.testing.assert_allclose(resumed_episodes, expected_episodes, atol=1e-9)
    assert resumed["accuracy"] == pytest.approx(expected["accuracy"], abs=1e-9)
    assert set(resumed["curves"]) == set(expected["curves"])
    for name, points in expected["curves"].items():
        if name in (RECOVERY_CURVE, TRAIN_CURVE):  # seconds: the same steps, not the same times
            assert [s for s, _ in resumed["curves"][name]] == [s for s, _ in points], name
            continue
        np.testing.assert_allclose(np.array(resumed["curves"][name], dtype=float), np.array(points, dtype=float),
                                   atol=1e-9, err_msg=name)
    assert resumed["method_info"] == pytest.approx(expected["method_info"], abs=1e-9)
    assert not list((tmp_path / "killed").glob(f"quickstart/smoke/{method}/*.artifacts/checkpoint.pt"))
