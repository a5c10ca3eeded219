"""`run --reuse FOLDER` (dfmlbench.reuse): a cell another suite already computed (the same config
but the suite's and profile's names) is copied in with its provenance instead of run again; a
cell computed otherwise, on other inputs, or from an edited record runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dfmlbench.config import computation_key
from dfmlbench.learner_store import learner_path
from dfmlbench.paths import PACKAGE_DIR
from tests.cli_harness import assert_one_line_error, call

SMOKE = ("--profile", "smoke", "--no-progress")


def records(folder: Path, suite: str, method: str) -> list[tuple[Path, dict]]:
    return [(p, json.loads(p.read_text())) for p in sorted(folder.glob(f"{suite}/smoke/{method}/*.json"))]


@pytest.fixture(scope="module")
def computed(tmp_path_factory) -> Path:
    """The quickstart's Average and FREE at the smoke profile."""
    out = tmp_path_factory.mktemp("computed")
    result = call("run", "--suite", "quickstart", *SMOKE, "--method", "average", "free", "--out", out)
    assert result.code == 0, result.err
    return out


@pytest.fixture(scope="module")
def renamed_suite(tmp_path_factory) -> Path:
    """The quickstart under another name: its cells compute the quickstart's."""
    text = (PACKAGE_DIR / "suites" / "quickstart.yaml").read_text()
    path = tmp_path_factory.mktemp("suite") / "renamed.yaml"
    path.write_text(text.replace("suite: quickstart", "suite: renamed", 1))
    return path


def test_cells_computed_under_another_suite_name_are_copied_in_with_their_provenance(
        computed, renamed_suite, tmp_path):
    result = call("run", "--suite", renamed_suite, *SMOKE, "--method", "average", "free", "random",
                  "--reuse", computed, "--out", tmp_path)
    assert result.code == 0, result.err
    assert "1 cell(s) run, 0 already recorded, 2 copied in from --reuse" in result.out
    assert "reused (from quickstart/smoke)" in result.out
    for method in ("average", "free"):
        ((original_path, original),) = records(computed, "quickstart", method)
        ((copy_path, copy),) = records(tmp_path, "renamed", method)
        assert (copy["suite"], copy["config"]["suite"]["name"]) == ("renamed", "renamed")
        assert copy["config_hash"] != original["config_hash"]  # its own identity under this suite
        assert computation_key(copy["config"]) == computation_key(original["config"])
        assert copy["reused_from"]["config_hash"] == original["config_hash"]
        assert copy["reused_from"]["suite"] == "quickstart"
        assert copy["accuracy"] == original["accuracy"] and copy["timings"] == original["timings"]
        np.testing.assert_array_equal(np.load(copy_path.parent / copy["per_episode_file"]),
                                      np.load(original_path.parent / original["per_episode_file"]))
        assert copy["environment"] == original["environment"]  # where the numbers were measured
    ((free_path, free),) = records(tmp_path, "renamed", "free")
    assert learner_path(free_path.with_suffix("")).read_bytes() == \
        learner_path(records(computed, "quickstart", "free")[0][0].with_suffix("")).read_bytes()
    ((_, random),) = records(tmp_path, "renamed", "random")
    assert "reused_from" not in random  # the folder did not compute it: it ran

    again = call("run", "--suite", renamed_suite, *SMOKE, "--method", "average", "free", "--reuse", computed,
                 "--out", tmp_path)
    assert "0 cell(s) run, 2 already recorded, 0 copied in" in again.out

    report = call("report", "--suite", renamed_suite, "--profile", "smoke", "--runs", tmp_path,
                  "--out", tmp_path / "report")
    assert report.code == 0, report.err
    readme = (tmp_path / "report" / "README.md").read_text()
    assert f"--reuse {computed}" in readme and "## Reused records" in readme
    assert "free glyphs 5w1s seed 0: computed as quickstart/smoke" in readme


def test_another_config_other_inputs_or_an_edited_record_are_not_reused(computed, renamed_suite, tmp_path):
    folder = tmp_path / "edited"
    for method, edit in (("average", lambda r: r["pool"].update(key="another-pool")),
                         ("free", lambda r: r["config"]["method"]["settings"].update(k=99))):
        ((path, record),) = records(computed, "quickstart", method)
        for file in path.parent.glob(path.stem + "*"):
            (folder / file.relative_to(computed)).parent.mkdir(parents=True, exist_ok=True)
            if file.is_file():
                (folder / file.relative_to(computed)).write_bytes(file.read_bytes())
        edit(record)
        (folder / path.relative_to(computed)).write_text(json.dumps(record))
    out = tmp_path / "out"
    result = call("run", "--suite", renamed_suite, *SMOKE, "--method", "average", "--reuse", folder,
                  "--set", "protocol.test_episodes=10", "--reuse", computed, "--out", out)
    assert result.code == 0, result.err
    assert "1 cell(s) run, 0 already recorded, 0 copied in" in result.out  # another protocol: runs
    out = tmp_path / "out2"
    result = call("run", "--suite", renamed_suite, *SMOKE, "--method", "average", "free", "--reuse", folder,
                  "--out", out)
    assert result.code == 0, result.err
    assert "2 cell(s) run, 0 already recorded, 0 copied in" in result.out  # other pool; edited config


def test_bad_reuse_arguments_are_one_line_errors(tmp_path):
    assert_one_line_error(call("run", "--suite", "quickstart", *SMOKE, "--reuse", tmp_path / "nope",
                               "--out", tmp_path), "--reuse", "no such folder")
    assert_one_line_error(call("run", "--suite", "quickstart", *SMOKE, "--reuse", tmp_path, "--force",
                               "--out", tmp_path), "--reuse and --force")


def test_plan_shows_the_cells_run_would_copy_in_and_estimates_from_them(computed, renamed_suite, tmp_path):
    result = call("plan", "--suite", renamed_suite, "--profile", "smoke", "--method", "average", "free",
                  "random", "--reuse", computed, "--out", tmp_path)
    assert result.code == 0, result.err
    rows = {line.split(" | ")[1]: line for line in result.out.splitlines() if line.startswith("| ")}
    assert "| reusable |" in rows["free glyphs 5w1s seed 0"] and "measured (1 record)" in rows["free glyphs 5w1s seed 0"]
    assert "| pending |" in rows["random glyphs 5w1s seed 0"]
    assert "1 reusable" not in result.out and "2 reusable, 1 pending" in result.out
