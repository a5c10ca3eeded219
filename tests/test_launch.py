"""Planning, sharding, locks and the submitit launchers (issue 15): `plan` shows every cell with
its status and cost; shards partition the cells; jobs sharing a records folder and a pool cache
never build a pool or run a cell twice; the local engine records what a plain run records;
the Slurm path submits an sbatch script that carries the configured resources."""

from __future__ import annotations

import json
import os
import stat
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from dfmlbench import pool as pool_module
from dfmlbench.locks import claimed
from dfmlbench.planning import cell_stem, expand_cells, shard
from dfmlbench.config import load_suite, resolve
from dfmlbench.pool import PoolSpec, cache_folder, obtain_pool
from tests.cli_harness import assert_one_line_error, call

SMOKE = ("--suite", "quickstart", "--profile", "smoke")


def records(folder: Path) -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in folder.glob("quickstart/smoke/*/*.json")}


def test_plan_prints_every_paper_cell_of_table2_with_a_total_cost(tmp_path):
    result = call("plan", "--suite", "table2", "--profile", "paper", "--out", tmp_path)
    assert result.code == 0, result.err
    assert "66 cell(s): 0 done, 0 running, 0 failed, 66 pending." in result.out
    assert "Estimated cost of the 66 not done:" in result.out and " h plus " in result.out
    # FREE_5 on miniImageNet at the full budget costs the paper's 0.41 h of recovery
    assert "| free miniimagenet 5w1s seed 0 | pending |" in result.out
    assert "0.41 h | paper Time x budget share |" in result.out
    listed = json.loads(call("plan", "--suite", "table2", "--profile", "paper", "--out", tmp_path, "--json").out)
    assert len(listed) == 66 and {c["status"] for c in listed} == {"pending"}
    assert len({c["config_hash"] for c in listed}) == 66


def test_plan_on_a_half_run_folder_shows_what_is_done_and_what_it_cost(tmp_path, glyphs):
    assert call("run", *SMOKE, "--method", "random", "--out", tmp_path, "--no-progress").code == 0
    listed = json.loads(call("plan", *SMOKE, "--method", "random", "average", "--out", tmp_path, "--json").out)
    by_method = {c["method"]: c for c in listed}
    assert by_method["random"]["status"] == "done" and by_method["average"]["status"] == "pending"
    assert by_method["random"]["estimate_source"] == "measured (1 record)"
    assert Path(by_method["random"]["record"]).is_file()
    assert by_method["average"]["pool"]["label"].startswith("glyphs: 3 x conv4")


def test_a_cell_locked_by_another_process_is_running_and_not_run_twice(tmp_path, glyphs):
    cell = next(c for c in expand_cells(resolve(load_suite("quickstart"), "smoke", []), ["random"]))
    stem = cell_stem(tmp_path, cell)
    with claimed(stem, tmp_path) as mine:  # a second open file description: as another process would hold it
        assert mine
        listed = json.loads(call("plan", *SMOKE, "--method", "random", "--out", tmp_path, "--json").out)
        assert listed[0]["status"] == "running"
        result = call("run", *SMOKE, "--method", "random", "--out", tmp_path, "--no-progress")
        assert result.code == 0 and "1 running elsewhere" in result.out
    assert not stem.with_suffix(".json").exists()


def test_shards_partition_the_cells_and_keep_them_however_far_others_ran(tmp_path):
    cells = expand_cells(resolve(load_suite("table2"), "paper", []))
    shards = [shard(cells, tmp_path, i, 4) for i in (1, 2, 3, 4)]
    hashes = [c.hash for part in shards for c in part]
    assert sorted(hashes) == sorted({c.hash for c in cells}) and len(hashes) == 66
    assert_one_line_error(call("run", *SMOKE, "--shard", "0/2", "--out", tmp_path), "--shard '0/2'", "i/N")
    assert_one_line_error(call("run", *SMOKE, "--shard", "1/2", "--launcher", "local", "--out", tmp_path),
                          "--shard and --launcher")


def test_concurrent_requests_for_one_pool_build_it_once(glyphs, monkeypatch):
    spec = PoolSpec(num_teachers=2, epochs=1, seed=7)
    builds = []
    real_build = pool_module.build_pool

    def counted(*args, **kwargs):
        builds.append(threading.get_ident())
        time.sleep(0.5)  # long enough for the other request to arrive while this one builds
        return real_build(*args, **kwargs)

    monkeypatch.setattr(pool_module, "build_pool", counted)
    pools = []
    threads = [threading.Thread(target=lambda: pools.append(obtain_pool(glyphs, spec))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(builds) == 1 and len(pools) == 2
    assert pools[0].key == pools[1].key and len(pools[1]) == 2
    manifest = json.loads((cache_folder(glyphs, spec) / "manifest.json").read_text())
    assert len(manifest["teachers"]) == 2


@pytest.mark.slow
def test_local_launcher_records_what_a_plain_run_records(tmp_path, glyphs, monkeypatch):
    methods = ("--method", "random", "average", "best-model")
    plain = call("run", *SMOKE, *methods, "--out", tmp_path / "plain", "--no-progress")
    assert plain.code == 0, plain.err
    # a fresh cache (the jobs inherit it), so that the launcher's pool stage builds the pool, once
    monkeypatch.setenv("DFMLBENCH_CACHE", str(tmp_path / "cache"))
    launched = call("run", *SMOKE, *methods, "--out", tmp_path / "jobs", "--launcher", "local")
    again = call("run", *SMOKE, *methods, "--out", tmp_path / "jobs", "--launcher", "local")
    assert launched.code == 0, launched.out + launched.err
    assert "nothing to submit" in again.out
    lines = [json.loads(line) for line in (tmp_path / "jobs" / "jobs" / "launches.jsonl").read_text().splitlines()]
    assert [line["kind"] for line in lines].count("pool") == 1 and [line["kind"] for line in lines].count("cell") == 3
    ours, theirs = records(tmp_path / "jobs"), records(tmp_path / "plain")
    assert set(ours) == set(theirs)  # the same cells, by config hash, and no duplicates
    for name, record in ours.items():
        assert record["accuracy"]["mean"] == pytest.approx(theirs[name]["accuracy"]["mean"], abs=1e-9)
        folder = tmp_path / "jobs" / "quickstart" / "smoke" / record["method"]
        other = tmp_path / "plain" / "quickstart" / "smoke" / record["method"]
        np.testing.assert_allclose(np.load(folder / record["per_episode_file"]),
                                   np.load(other / theirs[name]["per_episode_file"]), atol=1e-9)


def _fake_slurm(folder: Path) -> Path:
    """`srun` and `sbatch` stand-ins: sbatch keeps each script it is given and answers as Slurm."""
    folder.mkdir()
    (folder / "srun").write_text("#!/bin/sh\nexit 0\n")
    (folder / "sbatch").write_text(f"""#!/bin/sh
n=$(ls {folder}/*.sbatch 2>/dev/null | wc -l)
cp "$1" {folder}/submitted-$n.sbatch
echo "Submitted batch job $((4242 + n))"
""")
    for name in ("srun", "sbatch"):
        (folder / name).chmod((folder / name).stat().st_mode | stat.S_IEXEC)
    return folder


def test_slurm_launcher_submits_arrays_with_the_configured_resources(tmp_path, glyphs, monkeypatch):
    bin_folder = _fake_slurm(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{bin_folder}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("DFMLBENCH_CACHE", str(tmp_path / "cache"))  # no pool yet: a pool job first
    result = call("run", *SMOKE, "--method", "random", "average", "best-model", "--out", tmp_path / "runs",
                  "--launcher", "slurm", "--set", "launcher.partition=gpu", "--set", "launcher.account=lab",
                  "--set", "launcher.gpus_per_job=1", "--set", "launcher.cpus_per_job=8",
                  "--set", "launcher.mem_gb=32", "--set", "launcher.timeout_min=90",
                  "--set", "launcher.slurm.qos=high")
    assert result.code == 0, result.out + result.err
    scripts = [p.read_text() for p in sorted(bin_folder.glob("submitted-*.sbatch"))]
    assert len(scripts) == 3  # random (no teachers); the pool; the two cells that need it, as one array
    for script in scripts:
        for flag in ("--partition=gpu", "--account=lab", "--gpus-per-node=1", "--cpus-per-task=8", "--mem=32GB",
                     "--time=90", "--qos=high"):
            assert f"#SBATCH {flag}" in script, (flag, script)
    pool_id = next(line["job_id"] for line in map(json.loads, (tmp_path / "runs" / "jobs" / "launches.jsonl")
                                                  .read_text().splitlines()) if line["kind"] == "pool")
    array = next(s for s in scripts if "--array=0-1%2" in s)  # parallelism: at most the array
    assert f"#SBATCH --dependency=afterany:{pool_id}" in array
    assert "plan --suite quickstart" in result.out


def test_local_launcher_runs_a_suite_s_analyses_as_jobs(tmp_path, glyphs):
    args = ("--suite", "fig4", "--profile", "smoke", "--out", tmp_path, "--launcher", "local")
    result = call("run", *args)
    assert result.code == 0, result.out + result.err
    assert list(tmp_path.glob("fig4/smoke/analysis-teacher-features/*.json"))
    assert "ran: teacher-features" in result.out
    assert "nothing to submit" in call("run", *args).out


def test_slurm_launcher_builds_select_twins_in_one_pool_job(tmp_path, glyphs, monkeypatch):
    bin_folder = _fake_slurm(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{bin_folder}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("DFMLBENCH_CACHE", str(tmp_path / "cache"))
    result = call("run", "--suite", "table2", "--profile", "smoke", "--method", "average", "free-official",
                  "--out", tmp_path / "runs", "--launcher", "slurm")
    assert result.code == 0, result.out + result.err
    launches = [json.loads(line) for line in (tmp_path / "runs" / "jobs" / "launches.jsonl").read_text().splitlines()]
    pool_ids = [line["job_id"] for line in launches if line["kind"] == "pool"]
    assert len(pool_ids) == 1  # average's best-epoch pool and free-official's final-epoch one: one training run
    cell_scripts = [p.read_text() for p in sorted(bin_folder.glob("submitted-*.sbatch"))][1:]
    assert len(cell_scripts) == 2
    assert all(f"#SBATCH --dependency=afterany:{pool_ids[0]}" in script for script in cell_scripts)
    assert "also fills the" in result.out and "epoch's pool" in result.out
