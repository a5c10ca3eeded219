"""End to end through `dfmlbench.cli.main`: run (records, resume, --force, damaged leftovers),
list, compare and the one-line errors of bad input (exit code 2).

Every run uses the quickstart suite's smoke profile (3 teachers x 2 epochs on the built-in glyphs
data, 20 small test episodes). The one expensive run is shared by the module (`smoke_run`); the
tests that rerun cells work on a copy of its records.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cli_harness import Result, assert_one_line_error, call
from dfmlbench.config import config_hash, load_suite, resolve
from dfmlbench.runner import resolve_device

SMOKE = ["--suite", "quickstart", "--profile", "smoke"]
SMOKE_TEST_EPISODES = resolve(load_suite("quickstart"), "smoke", [])["protocol"]["test_episodes"]


def record_paths(out: Path, method: str) -> list[Path]:
    return sorted((out / "quickstart" / "smoke" / method).glob("*.json"))


def the_record(out: Path, method: str) -> Path:
    paths = record_paths(out, method)
    assert len(paths) == 1, paths
    return paths[0]


def cells_line(stdout: str) -> str:
    lines = [line for line in stdout.splitlines() if "cell(s) run" in line]
    assert len(lines) == 1, stdout
    return lines[0]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> tuple[Path, Result]:
    """Random and Average on the same smoke episodes, in one run."""
    out = tmp_path_factory.mktemp("runs")
    return out, call("run", *SMOKE, "--method", "random", "--method", "average", "--out", out)


@pytest.fixture
def copied_run(smoke_run, tmp_path) -> Path:
    out = tmp_path / "runs"
    shutil.copytree(smoke_run[0], out)
    return out


# --- run -----------------------------------------------------------------------------------------


def test_run_writes_records(smoke_run):
    out, result = smoke_run
    assert result.code == 0, result.err
    # stderr is not a terminal here: one log line per stage and validation, nothing else
    assert result.err and all(re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (random|average) glyphs 5w1s seed 0: ", line)
                              for line in result.err.splitlines()), result.err
    assert "suite quickstart (profile smoke): 2 cell(s)" in result.out
    assert cells_line(result.out).startswith("2 cell(s) run, 0 already recorded, 0 failed")

    path = the_record(out, "random")
    stem = path.with_suffix("")
    assert stem.name.startswith("glyphs-5w1s-seed0-")
    npy = stem.with_suffix(".episodes.npy")
    assert npy.is_file()
    events, log = stem.with_suffix(".events.jsonl"), stem.with_suffix(".log")
    learner = stem.with_suffix(".learner.safetensors")
    assert sorted(p.name for p in path.parent.iterdir()) == sorted([path.name, npy.name, events.name, log.name,
                                                                    learner.name])
    stages = [json.loads(line)["stage"] for line in events.read_text().splitlines()]
    assert stages == ["start", "fit", "meta-test", "recorded"]  # random uses no teachers: no pool stage
    assert "random glyphs 5w1s seed 0: recorded accuracy=" in log.read_text()

    record = json.loads(path.read_text())
    assert record["status"] == "ok"
    assert (record["suite"], record["profile"], record["method"], record["dataset"]) == \
        ("quickstart", "smoke", "random", "glyphs")
    assert (record["way"], record["shot"], record["query"], record["seed"]) == (5, 1, 5, 0)

    accuracy = record["accuracy"]
    assert accuracy["n"] == SMOKE_TEST_EPISODES == 20
    assert 0 <= accuracy["mean"] <= 100 and accuracy["ci95"] >= 0
    per_episode = np.load(npy, allow_pickle=False)
    assert record["per_episode_file"] == npy.name
    assert per_episode.shape == (SMOKE_TEST_EPISODES,) and per_episode.dtype == np.float64
    assert accuracy["mean"] == pytest.approx(per_episode.mean())
    assert accuracy["ci95"] == pytest.approx(1.96 * per_episode.std() / np.sqrt(len(per_episode)))
    assert record["test_episodes"]["count"] == SMOKE_TEST_EPISODES

    config = record["config"]
    assert config["profile"] == "smoke" and config["suite"]["name"] == "quickstart"
    assert config["method"] == {"name": "random", "settings": {"reinit_per_task": False}}
    assert config["protocol"]["test_episodes"] == SMOKE_TEST_EPISODES
    assert "pool" not in config
    assert record["config_hash"] == config_hash(config) and stem.name.endswith(record["config_hash"])

    environment = record["environment"]
    assert environment["torch"] == torch.__version__
    assert environment["device"] == str(resolve_device("auto"))
    assert environment["device_name"]

    timings = record["timings"]
    assert timings["recovery_seconds"] is None
    for key in ("meta_train_seconds", "eval_seconds", "wall_seconds"):
        assert timings[key] >= 0
    assert timings["pool_seconds"] == 0.0
    assert record["pool"] is None

    row = re.search(r"^\| random \| glyphs \| 1 \| 0 \| (\d+\.\d\d) ± (\d+\.\d\d) \| - \| - \| [\d.]+ \| ran \|$",
                    result.out, re.MULTILINE)
    assert row, result.out
    assert float(row.group(1)) == pytest.approx(accuracy["mean"], abs=0.005)


def test_methods_that_train_nothing_need_no_budget_notice(smoke_run):
    assert "note: " not in smoke_run[1].out  # Random and Average have no paper budget to fall short of


def test_run_records_the_teacher_pool(smoke_run):
    out, _ = smoke_run
    record = json.loads(the_record(out, "average").read_text())
    assert record["status"] == "ok" and record["method"] == "average"
    assert record["config"]["pool"]["num_teachers"] == 3 and record["config"]["pool"]["epochs"] == 2
    assert record["pool"]["num_teachers"] == 3 and record["pool"]["architectures"] == ["conv4"]
    assert record["timings"]["recovery_seconds"] is None
    assert record["accuracy"]["n"] == SMOKE_TEST_EPISODES
    random_record = json.loads(the_record(out, "random").read_text())
    assert record["test_episodes"] == random_record["test_episodes"]  # the same fixed episodes
    assert "| average | glyphs | 1 | 0 |" in smoke_run[1].out


def test_rerun_skips_recorded_cells(smoke_run):
    out, _ = smoke_run
    paths = record_paths(out, "random") + record_paths(out, "average")
    files = paths + [p.with_suffix(".episodes.npy") for p in paths]
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in files}
    result = call("run", *SMOKE, "--method", "random", "--method", "average", "--out", out)
    assert result.code == 0, result.err
    assert cells_line(result.out).startswith("0 cell(s) run, 2 already recorded, 0 failed")
    assert re.search(r"^\| random \| glyphs \| 1 \| 0 \| .* \| recorded \|$", result.out, re.MULTILINE)
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in files} == before
    assert record_paths(out, "random") + record_paths(out, "average") == paths


def test_force_reruns(copied_run):
    path = the_record(copied_run, "random")
    previous = np.load(path.with_suffix(".episodes.npy"))
    os.utime(path, ns=(0, 0))
    result = call("run", *SMOKE, "--method", "random", "--out", copied_run, "--force")
    assert result.code == 0, result.err
    assert cells_line(result.out).startswith("1 cell(s) run, 0 already recorded")
    assert the_record(copied_run, "random") == path
    assert path.stat().st_mtime_ns > 0
    record = json.loads(path.read_text())
    assert record["status"] == "ok"
    # the same cell gives the same per-episode accuracies
    np.testing.assert_allclose(np.load(path.with_suffix(".episodes.npy")), previous)


def test_damaged_record_or_leftover_tmp_runs_the_cell_again(copied_run):
    random_path = the_record(copied_run, "random")
    random_path.write_text('{"status": "ok", "config_ha')  # a JSON cut short
    average_path = the_record(copied_run, "average")
    content = average_path.read_text()
    average_path.unlink()  # killed before the rename: only the temporary file is left
    leftover = average_path.with_name(f".{average_path.name}.k1ll3d.tmp")
    leftover.write_text(content[: len(content) // 2])

    result = call("run", *SMOKE, "--method", "random", "--method", "average", "--out", copied_run)
    assert result.code == 0, result.err
    assert cells_line(result.out).startswith("2 cell(s) run, 0 already recorded, 0 failed")
    for path in (random_path, average_path):
        record = json.loads(path.read_text())
        assert record["status"] == "ok" and record["accuracy"]["n"] == SMOKE_TEST_EPISODES


def test_record_without_episodes_file_runs_again(copied_run):
    path = the_record(copied_run, "random")
    path.with_suffix(".episodes.npy").unlink()
    result = call("run", *SMOKE, "--method", "random", "--out", copied_run)
    assert result.code == 0, result.err
    assert cells_line(result.out).startswith("1 cell(s) run, 0 already recorded")
    assert path.with_suffix(".episodes.npy").is_file()


# --- bad input: exit code 2 and one line on stderr -----------------------------------------------


BROKEN_SUITE = "suite: broken\nmethods: [random]\n  datasets: [glyphs]\n"


@pytest.mark.parametrize("argv, fragments", [
    (["run", *SMOKE, "--method", "randm"], ["unknown method 'randm'", "did you mean 'random'?"]),
    (["run", "--suite", "quickstrat", "--profile", "smoke", "--method", "random"],
     ["unknown suite 'quickstrat'", "quickstart"]),
    (["run", "--suite", "quickstart", "--profile", "smok", "--method", "random"],
     ["no profile 'smok'", "did you mean 'smoke'?"]),
    (["run", *SMOKE, "--method", "random", "--set", "protocol.steps"], ["bad --set", "key=value"]),
    (["run", *SMOKE, "--method", "random", "--set", "protocl.way=5"],
     ["unknown setting 'protocl.way'", "did you mean 'protocol'?"]),
    (["run", *SMOKE, "--method", "random", "--set", "pool.nonexistent=1"],
     ["unknown setting 'pool.nonexistent'"]),
    (["run", *SMOKE, "--method", "random", "--set", "method.variant=zero-step"],
     ["--set method.variant", "none of the methods run (random)"]),
    (["run", *SMOKE, "--method", "random", "--device", "bogus"], ["unknown device 'bogus'"]),
    (["run", *SMOKE, "--method", "random", "--set", "protocol.lr_grid=[0.1, -1]"],
     ["protocol.lr_grid=[0.1, -1] is not allowed", "a non-empty list, each a positive, finite number"]),
    (["run", *SMOKE, "--method", "random", "--set", "protocol.lr_grid=[]"], ["protocol.lr_grid"]),
    (["run", *SMOKE, "--method", "random", "--bogus-flag"], ["unrecognized arguments: --bogus-flag"]),
    (["run", "--profile", "smoke"], ["--suite"]),
    (["frobnicate"], ["invalid choice: 'frobnicate'"]),
    (["list", "models"], ["invalid choice: 'models'"]),
])
def test_bad_input(tmp_path, argv, fragments):
    out = tmp_path / "runs"
    result = call(*argv, *(["--out", out] if argv[0] == "run" and "--suite" in argv else []))
    assert_one_line_error(result, *fragments)
    assert not out.exists() or not any(out.rglob("*.json"))


def test_malformed_suite_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text(BROKEN_SUITE)
    result = call("run", "--suite", path, "--profile", "smoke", "--method", "random", "--out", tmp_path)
    assert_one_line_error(result, str(path), "malformed YAML", "line 3")


def test_missing_dataset_names_the_folder_looked_at(tmp_path):
    missing = tmp_path / "nonexistent"
    result = call("run", *SMOKE, "--method", "random", "--set", "datasets=omniglot",
                  "--data-root", missing, "--out", tmp_path / "runs")
    assert_one_line_error(result, "dataset 'omniglot' not found", str(missing), "--data-root")
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*.json"))


def test_compare_missing_file(tmp_path):
    missing = tmp_path / "absent.json"
    result = call("compare", missing, missing)
    assert_one_line_error(result, "cannot read record", str(missing))


def test_compare_damaged_or_unfinished_record(tmp_path, smoke_run):
    good = the_record(smoke_run[0], "random")
    damaged = tmp_path / "damaged.json"
    damaged.write_text("{not json")
    assert_one_line_error(call("compare", good, damaged), str(damaged), "not valid JSON")
    failed = tmp_path / "failed.json"
    failed.write_text(json.dumps({"status": "failed", "error": "boom"}))
    assert_one_line_error(call("compare", failed, good), "is not a finished dfmlbench record")


def test_compare_refuses_different_episodes(tmp_path, smoke_run):
    good = the_record(smoke_run[0], "random")
    other = json.loads(good.read_text())
    other["test_episodes"]["sha"] = "0" * 16
    path = tmp_path / good.name
    shutil.copy(good.with_suffix(".episodes.npy"), tmp_path)
    path.write_text(json.dumps(other))
    assert_one_line_error(call("compare", good, path), "different episodes")


def test_compare_non_record_json(tmp_path):
    path = tmp_path / "list.json"
    path.write_text("[]")
    assert_one_line_error(call("compare", path, path))


def test_compare_record_without_episodes_file(tmp_path, smoke_run):
    for method in ("random", "average"):
        shutil.copy(the_record(smoke_run[0], method), tmp_path / f"{method}.json")
    assert_one_line_error(call("compare", tmp_path / "random.json", tmp_path / "average.json"))


def test_top_level_usage_hint():
    line = assert_one_line_error(call("--bogus"))
    assert "dfmlbench dfmlbench" not in line


def test_subprocess_error_is_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "dfmlbench", "run", *SMOKE, "--method", "randm", "--out", str(tmp_path / "runs")],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, env={**os.environ})
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("dfmlbench: error: ") and "did you mean 'random'?" in lines[0]
    assert not (tmp_path / "runs").exists()


# --- list and compare ----------------------------------------------------------------------------


@pytest.mark.parametrize("what, names", [
    ("methods", ["random", "random-reinit", "best-model", "best-model-zero-step", "average"]),
    ("suites", ["quickstart", "baselines"]),
    ("datasets", ["glyphs", "omniglot"]),
])
def test_list(what, names):
    result = call("list", what)
    assert result.code == 0 and result.err == ""
    listed = [line.split()[0] for line in result.out.splitlines()]
    assert set(names) <= set(listed)
    assert len(listed) == len(set(listed))
    if what == "suites":
        assert any(line.startswith("quickstart") and "glyphs" in line for line in result.out.splitlines())


def test_list_defaults_to_methods():
    assert call("list").out == call("list", "methods").out


def test_compare(smoke_run):
    out, _ = smoke_run
    a_path, b_path = the_record(out, "random"), the_record(out, "average")
    a, b = json.loads(a_path.read_text()), json.loads(b_path.read_text())
    result = call("compare", a_path, b_path)
    assert result.code == 0, result.err
    assert result.err == ""
    lines = result.out.splitlines()
    assert lines[0].startswith(f"random: {a['accuracy']['mean']:.2f} ± {a['accuracy']['ci95']:.2f}")
    assert f"average: {b['accuracy']['mean']:.2f} ± {b['accuracy']['ci95']:.2f}" in lines[0]
    match = re.fullmatch(r"difference ([+-]\d+\.\d\d) ± (\d+\.\d\d) points over (\d+) paired episodes; "
                         r"paired t-test p = (\S+), Wilcoxon p = (\S+)", lines[1])
    assert match, result.out
    diff = np.load(a_path.with_suffix(".episodes.npy")) - np.load(b_path.with_suffix(".episodes.npy"))
    assert float(match.group(1)) == pytest.approx(diff.mean(), abs=0.005)
    assert int(match.group(3)) == SMOKE_TEST_EPISODES
    for p in (match.group(4), match.group(5)):
        assert 0 <= float(p) <= 1
    # the same record against itself: no difference
    same = call("compare", a_path, a_path)
    assert same.code == 0 and "difference +0.00 ± 0.00" in same.out and "p = 1," in same.out


def test_summary_table_gives_recovery_time_as_a_multiple_of_free():
    from types import SimpleNamespace
    from dfmlbench.runner import Outcome, summary_table

    def outcome(method, recovery):
        cell = SimpleNamespace(method=SimpleNamespace(name=method), dataset="omniglot", shot=1, seed=0, sweep={})
        record = {"accuracy": {"mean": 50.0, "ci95": 1.0},
                  "timings": {"recovery_seconds": recovery, "meta_train_seconds": 1.0}}
        return Outcome(cell, "ran", record, Path("x.json"))

    reconstructed = outcome("dro", None)
    reconstructed.record["method_info"] = {"reconstructed": True}
    table = summary_table([outcome("random", None), outcome("free", 2.0), outcome("purer", 9.0), reconstructed])
    assert "| dro (reconstructed) | omniglot |" in table
    assert "| recovery / free |" in table.splitlines()[0]
    assert "| purer | omniglot | 1 | 0 | 50.00 ± 1.00 | 9.0 | 4.5x |" in table
    assert "| free | omniglot | 1 | 0 | 50.00 ± 1.00 | 2.0 | 1.0x |" in table
    assert "| random | omniglot | 1 | 0 | 50.00 ± 1.00 | - | - |" in table


def test_meta_test_lr_chosen_on_meta_val(tmp_path, smoke_run):
    out = tmp_path / "runs"
    result = call("run", *SMOKE, "--method", "random", "--set", "protocol.lr_grid=[0.001, 0.01, 0.1]",
                  "--out", out)
    assert result.code == 0, result.err
    record = json.loads(the_record(out, "random").read_text())
    choice = record["meta_test_lr"]
    assert choice["selected_on"] == "meta-val" and set(choice["val_accuracy_by_lr"]) == {"0.001", "0.01", "0.1"}
    by_lr = choice["val_accuracy_by_lr"]
    assert choice["chosen"] == float(max(by_lr, key=by_lr.get))
    fixed = json.loads(the_record(smoke_run[0], "random").read_text())
    assert fixed["meta_test_lr"] == {"chosen": 0.01, "selected_on": "fixed", "val_accuracy_by_lr": None}
    assert "lr_grid" not in fixed["config"]["protocol"]  # null keys stay out of the hash
    assert record["config_hash"] != fixed["config_hash"]


def test_max_over_test_is_a_labelled_diagnostic_beside_the_selected_result(tmp_path):
    out = tmp_path / "runs"
    result = call("run", *SMOKE, "--method", "free", "--set", "protocol.max_over_test=true", "--out", out)
    assert result.code == 0, result.err
    # below the working budget, the run says so under its table (docs/profiles.md)
    (notice,) = [line for line in result.out.splitlines() if line.startswith("note: ")]
    assert "(free 0.2%)" in notice and "docs/profiles.md" in notice
    record = json.loads(the_record(out, "free").read_text())
    tests, vals = record["curves"]["test_accuracy"], record["curves"]["val_accuracy"]
    assert [step for step, _ in tests] == [step for step, _ in vals]  # at every selection point
    diagnostic = record["extra_evaluations"]["max_over_test"]
    assert diagnostic["mean"] == max(value for _, value in tests) and diagnostic["evaluations"] == len(tests)
    assert "official-style" in diagnostic["label"] and "selects nothing" in diagnostic["label"]
    # the result is still the one test of the meta-val-selected learner (which may or may not be the maximum);
    # a tolerance, since the periodic and the final test run through different batching
    best_val = max(value for _, value in vals)
    selected = [test for (_, test), (_, val) in zip(tests, vals) if val == best_val]
    assert any(abs(record["accuracy"]["mean"] - test) <= 1.0 for test in selected)
    assert record["config"]["protocol"]["max_over_test"] is True
    # the costs at each validation point, for the accuracy-vs-recovery figure
    for name in ("recovery_seconds", "train_seconds"):
        points = record["curves"][name]
        assert [step for step, _ in points] == [step for step, _ in vals], name
        assert all(0 <= a[1] <= b[1] for a, b in zip(points, points[1:])), name
    assert points[-1][1] <= record["timings"]["meta_train_seconds"] + record["timings"]["recovery_seconds"] + 1.0


def test_settings_added_later_keep_earlier_hashes_at_their_old_behaviour():
    from dfmlbench.planning import expand_cells
    suite = load_suite("quickstart")
    (default,) = expand_cells(resolve(suite, "smoke", []), ["free"])
    (literal,) = expand_cells(resolve(suite, "smoke", [("method_settings.free.bell_outer", "interpolate")]), ["free"])
    assert "bell_outer" not in default.config["method"]["settings"] and "max_over_test" not in default.config["protocol"]
    assert default.method.settings["bell_outer"] == "adam_pseudograd"
    assert literal.config["method"]["settings"]["bell_outer"] == "interpolate" and literal.hash != default.hash


def test_a_missing_dataset_stops_the_run_before_any_cell(tmp_path):
    out = tmp_path / "runs"
    result = call("run", *SMOKE, "--method", "random", "--set", "datasets=[glyphs, cifar-fs]",
                  "--data-root", tmp_path / "empty", "--out", out)
    assert_one_line_error(result, "cifar-fs")
    assert not out.exists() or not any(out.rglob("*.json"))  # the glyphs cell did not run first
