"""Every registered method and variant behind the one interface, at smoke scale: it runs in
seconds through the CLI, writes a complete record, is deterministic (the same seed twice gives
identical per-episode accuracies: same process, same code path), and records a recovery time
exactly when it recovers data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cli_harness import call
from dfmlbench.methods import METHODS
from dfmlbench.records import CellRecord, Timings

# The methods that invert teachers into data (the paper's Time column); every other method
# must record no recovery time.
RECOVERING_BASES = {"free", "purer", "bidf-mkd"}

RECORD_FIELDS = ("status", "config_hash", "suite", "profile", "method", "dataset", "way", "shot", "query",
                 "seed", "accuracy", "meta_test_lr", "test_episodes", "timings", "learner", "method_info",
                 "curves", "pool", "dataset_fingerprint", "config", "environment", "started_at", "finished_at",
                 "per_episode_file", "schema_version")
TIMINGS = ("recovery_seconds", "meta_train_seconds", "validation_seconds", "eval_seconds", "pool_seconds",
           "wall_seconds")


def smoke_run(name: str, out: Path) -> tuple[dict, np.ndarray]:
    result = call("run", "--suite", "quickstart", "--profile", "smoke", "--method", name, "--out", out,
                  "--no-progress")
    assert result.code == 0, result.err
    (path,) = (out / "quickstart" / "smoke" / name).glob("*[0-9a-f].json")
    record = json.loads(path.read_text())
    return record, np.load(path.parent / record["per_episode_file"])


@pytest.mark.slow
@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_conforms_at_smoke_scale(name, tmp_path):
    record, accuracies = smoke_run(name, tmp_path / "first")
    assert set(RECORD_FIELDS) <= set(record)
    assert set(record) <= set(CellRecord.__annotations__)  # the one record schema declares every field
    assert set(record["timings"]) <= set(Timings.__annotations__)
    assert record["status"] == "ok" and record["method"] == name and record["profile"] == "smoke"
    assert set(TIMINGS) <= set(record["timings"])
    assert record["accuracy"]["n"] == record["test_episodes"]["count"] == len(accuracies) > 0
    assert np.isclose(record["accuracy"]["mean"], accuracies.mean())
    assert ((0 <= accuracies) & (accuracies <= 100)).all()
    for key, value in METHODS.get(name).settings.items():  # the variant's fixed settings hold
        assert record["config"]["method"]["settings"][key] == value
    uses_teachers = METHODS.get(name).load().uses_teachers
    assert (record["pool"] is not None) == uses_teachers

    recovery = record["timings"]["recovery_seconds"]
    if METHODS.get(name).load().name in RECOVERING_BASES:
        assert recovery is not None and recovery > 0
    else:
        assert recovery is None

    again, accuracies_again = smoke_run(name, tmp_path / "second")
    np.testing.assert_array_equal(accuracies_again, accuracies)  # same seed, same path: bit for bit
    assert again["config_hash"] == record["config_hash"]
