"""The bad-input battery: each case is a command and the fragments of the one line it must fail
with (exit 2, no traceback), before any pool is built and without writing anything. Damaged
dataset files are in test_bad_input_data.py, damaged or ill-fitting pools in
test_bad_input_pools.py; this file holds settings, locations, records and checkpoints.

Add a row whenever a new bad input is found: the battery grows with the code.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from cli_harness import assert_one_line_error, call

SMOKE = ["run", "--suite", "quickstart", "--profile", "smoke"]
RANDOM = [*SMOKE, "--method", "random"]


def setting(*assignments: str, method: str = "random") -> list[str]:
    return [*SMOKE, "--method", method, *(a for pair in (("--set", x) for x in assignments) for a in pair)]


# --- settings: typed, in range, fitting the data; checked when the suite is resolved ------------

SETTINGS = [
    (setting("protocol.test_episodes=abc"), ["protocol.test_episodes='abc' is not allowed", "an integer >= 1"]),
    (setting("protocol.test_episodes=-5"), ["protocol.test_episodes=-5", "an integer >= 1"]),
    (setting("protocol.test_episodes=0"), ["protocol.test_episodes=0"]),
    (setting("protocol.test_episodes=1.5"), ["protocol.test_episodes=1.5", "an integer"]),
    (setting("protocol.val_episodes=null"), ["protocol.val_episodes=null"]),
    (setting("protocol.lr=-1"), ["protocol.lr=-1 is not allowed", "a positive, finite number"]),
    (setting("protocol.lr=.nan"), ["protocol.lr=nan", "finite"]),
    (setting("protocol.lr=abc"), ["protocol.lr='abc'"]),
    (setting("protocol.steps=-3"), ["protocol.steps=-3", "an integer >= 0"]),
    (setting("protocol.query=0"), ["protocol.query=0", "an integer >= 1"]),
    (setting("protocol.way=1"), ["protocol.way=1", "an integer >= 2"]),
    (setting("protocol.episode_seed=-1"), ["protocol.episode_seed=-1"]),
    (setting("protocol.lr_grid=abc"), ["protocol.lr_grid='abc'", "null or a non-empty list"]),
    (setting("protocol.lr_grid=[]"), ["protocol.lr_grid=[]"]),
    (setting("shots=[0]"), ["shots=[0] is not allowed", "a non-empty list, each an integer >= 1"]),
    (setting("shots=[]"), ["shots=[]", "non-empty"]),
    (setting("seeds=abc"), ["seeds='abc'", "an integer >= 0"]),
    (setting("datasets=[]"), ["datasets=[]"]),
    (setting("datasets=omniglott"), ["unknown dataset 'omniglott'", "did you mean 'omniglot'?"]),
    (setting("runtime.eval_chunk=0"), ["runtime.eval_chunk=0", "an integer >= 1"]),
    (setting("runtime.download=maybe"), ["runtime.download='maybe'", "true or false"]),
    (setting("budget_fraction=2"), ["budget_fraction=2", "null or a number in (0, 1]"]),
    (setting("pool.num_teachers=0", method="average"), ["pool.num_teachers=0", "an integer >= 1"]),
    (setting("pool.lr=0", method="average"), ["pool.lr=0", "a positive, finite number"]),
    (setting("pool.select=worst", method="average"), ["pool.select='worst'", "one of best, final"]),
    (setting("pool.arch=vgg", method="average"), ["pool.arch='vgg'", "one of conv4"]),
    (setting("learner.arch=vgg"), ["learner.arch='vgg'", "one of conv4"]),
    (setting("sweep.pool.num_teachers=[3, 0]", method="average"), ["pool.num_teachers=0 is not allowed"]),
    (setting("sweep.pool.num_teachers=5", method="average"), ["sweep.pool.num_teachers must be a non-empty list"]),
    # Method settings, typed from their defaults and choices.
    (setting("method_settings.free.epochs=abc", method="free"),
     ["method_settings.free.epochs='abc' is not allowed", "an integer >= 1"]),
    (setting("method_settings.free.epochs=-1", method="free"), ["method_settings.free.epochs=-1"]),
    (setting("method_settings.free.outer_lr=0", method="free"),
     ["method_settings.free.outer_lr=0", "a positive, finite number"]),
    (setting("method_settings.free.generator=bogus", method="free"),
     ["method_settings.free.generator='bogus'", "one of meta, sequential"]),
    (setting("method_settings.free.replay_first_order=yes please", method="free"),
     ["method_settings.free.replay_first_order='yes please'", "true or false"]),
    (setting("method_settings.free.replay_max_metabatches=0", method="free"),
     ["method_settings.free.replay_max_metabatches=0", "null or an integer >= 1"]),
    (setting("method.k=0", method="free-2"), ["free to change"]),  # k is fixed by FREE_2
    (setting("method.k=0", method="free"), ["method_settings.free.k=0"]),
    (setting("method_settings.purer.pixel_lr=-0.1", method="purer"), ["method_settings.purer.pixel_lr=-0.1"]),
    (setting("method_settings.purer.tv_weight=-1", method="purer"),
     ["method_settings.purer.tv_weight=-1", "a finite number >= 0"]),
    (setting("method_settings.bidf-mkd.meta_iterations=0", method="bidf-mkd"),
     ["method_settings.bidf-mkd.meta_iterations=0"]),
    (setting("method_settings.dro.gamma_grid=[]", method="dro"), ["method_settings.dro.gamma_grid=[]"]),
    (setting("method_settings.best-model.variant=best", method="best-model"),
     ["method_settings.best-model.variant='best'", "one of finetune, zero-step, hungarian"]),
    # Methods that start from teacher weights, on pools that cannot give them one architecture.
    (setting("datasets=mix-small", method="average"),
     ["average starts the meta-learner from teacher weights", "multi-domain dataset 'mix-small'"]),
    (setting("datasets=mix-small", method="best-model"), ["best-model starts the meta-learner from teacher weights"]),
    (setting("pool.arch=mix", method="ota"),
     ["ota fuses teacher weights element-wise", "pool.arch=mix mixes conv4, resnet10, resnet18"]),
    # Analysis settings, typed from the analysis function's keyword defaults.
    (["run", "--suite", "fig4", "--profile", "smoke", "--set", "analysis_settings.teacher-features.num_images=abc"],
     ["analysis_settings.teacher-features.num_images='abc'", "an integer >= 1"]),
    (["run", "--suite", "fig4", "--profile", "smoke", "--set", "analysis_settings.teacher-features.split=tset"],
     ["analysis_settings.teacher-features.split='tset' is not allowed", "one of train, val, test"]),
    (["run", "--suite", "fig4", "--profile", "smoke", "--set", "analysis_settings.teacher-features.images=3"],
     ["analysis 'teacher-features' has no setting 'images'", "did you mean 'num_images'?"]),
    # Episodes and teachers fit each dataset's declared facts (no file is read for these).
    (setting("datasets=omniglot", "protocol.way=100"),
     ["protocol.way=100 is not allowed on omniglot", "41 classes", "at most 41"]),
    (setting("protocol.way=30"), ["protocol.way=30 is not allowed on glyphs", "at most 16"]),
    (setting("datasets=omniglot", "protocol.query=20"),
     ["shot 1 + protocol.query=20 needs 21 images per class", "omniglot", "as few as 20"]),
    (setting("shots=[50]", "protocol.query=15"), ["shot 50 + protocol.query=15 needs 65", "glyphs"]),
    (setting("pool.way=65", method="average"), ["pool.way=65 is not allowed on glyphs", "at most 64"]),
    (setting("datasets=mix-small", "protocol.way=30"), ["protocol.way=30 is not allowed on"]),
]


@pytest.mark.parametrize("argv, fragments", SETTINGS, ids=lambda v: " ".join(v[4:]) if isinstance(v, list) else None)
def test_bad_settings_stop_before_anything_is_built(argv, fragments, tmp_path, monkeypatch):
    monkeypatch.setenv("DFMLBENCH_CACHE", str(tmp_path / "cache"))
    assert_one_line_error(call(*argv, "--out", tmp_path / "runs"), *fragments)
    assert not (tmp_path / "runs").exists()
    assert not (tmp_path / "cache" / "pools").exists()


def test_exponent_floats_are_numbers_in_suite_files_too(tmp_path):
    from dfmlbench.config import load_suite, resolve
    from dfmlbench.planning import expand_cells

    path = tmp_path / "floats.yaml"
    path.write_text("suite: floats\nmethods: [free]\ndatasets: [glyphs]\nprotocol: {lr: 1e-2}\n"
                    "method_settings:\n  free: {outer_lr: 5e-4, generator_lr: 1E-3}\n")
    config = resolve(load_suite(str(path)), None, [])
    assert config["protocol"]["lr"] == 0.01
    (cell, *_) = expand_cells(config)
    assert cell.method.settings["outer_lr"] == 5e-4 and cell.method.settings["generator_lr"] == 1e-3


# --- locations: checked writable before any work -------------------------------------------------

def locations(tmp: Path) -> list[tuple[list, dict[str, str], list[str]]]:
    a_file = tmp / "a-file"
    a_file.write_text("not a folder")
    return [
        ([*RANDOM, "--out", a_file], {}, ["--out", "is a file, not a folder"]),
        ([*RANDOM, "--out", a_file / "runs"], {}, ["--out", f"lies under the file {a_file}"]),
        ([*RANDOM, "--out", "/proc/dfmlbench-runs"], {}, ["--out /proc/dfmlbench-runs is not writable"]),
        ([*RANDOM, "--out", tmp / "runs"], {"DFMLBENCH_CACHE": str(a_file)},
         ["the cache folder (DFMLBENCH_CACHE)", "is a file"]),
        ([*RANDOM, "--out", tmp / "runs"], {"DFMLBENCH_CACHE": "/proc/dfmlbench-cache"},
         ["the cache folder (DFMLBENCH_CACHE) /proc/dfmlbench-cache is not writable"]),
        (["report", "--suite", "quickstart", "--profile", "smoke", "--runs", tmp / "runs", "--out", a_file],
         {}, ["report --out", "is a file"]),
        (["report", "--suite", "quickstart", "--profile", "smoke", "--runs", tmp / "runs", "--out",
          a_file / "report"], {}, ["report --out", "lies under the file"]),
    ]


@pytest.mark.parametrize("case", range(7))
def test_bad_locations_stop_before_any_work(case, tmp_path, monkeypatch):
    argv, env, fragments = locations(tmp_path)[case]
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert_one_line_error(call(*argv), *fragments)
    assert not (tmp_path / "runs").exists()


def test_a_download_into_a_file_stops_before_fetching(tmp_path):
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    assert_one_line_error(call("data", "download", "cifar-fs", "--data-root", a_file / "data"),
                          "the download folder", "lies under the file")


def test_a_suite_file_that_is_not_utf8(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("suite: caf\u00e9\nmethods: [random]\n".encode("latin-1"))
    assert_one_line_error(call("run", "--suite", path, "--out", tmp_path / "runs"), str(path), "not UTF-8")


# --- records: never lost, never mixed, damaged ones rerun ----------------------------------------

@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> Path:
    """Random and Average run once on the smoke episodes (`--method a b` form)."""
    out = tmp_path_factory.mktemp("runs")
    result = call(*SMOKE, "--method", "random", "average", "--out", out, "--no-progress")
    assert result.code == 0, result.err
    return out


@pytest.fixture
def runs(recorded, tmp_path) -> Path:
    shutil.copytree(recorded, tmp_path / "runs")
    return tmp_path / "runs"


def record_of(out: Path, method: str) -> Path:
    (path,) = (out / "quickstart" / "smoke" / method).glob("*[0-9a-f].json")
    return path


def test_method_accepts_several_names_and_the_repeated_flag(recorded, tmp_path):
    assert record_of(recorded, "random").is_file() and record_of(recorded, "average").is_file()
    again = call(*SMOKE, "--method", "random", "--method", "average", "--out", recorded, "--no-progress")
    assert "0 cell(s) run, 2 already recorded" in again.out


def test_a_crashing_force_rerun_keeps_the_finished_record(runs, monkeypatch):
    from dfmlbench.methods.random_init import RandomInit

    path = record_of(runs, "random")
    before = path.read_bytes(), path.with_suffix(".episodes.npy").read_bytes()

    def device_fault(self, pool, ctx):
        raise RuntimeError("simulated device fault")

    monkeypatch.setattr(RandomInit, "fit", device_fault)
    result = call(*RANDOM, "--out", runs, "--force", "--no-progress")
    assert result.code == 1 and "simulated device fault" in result.err
    assert (path.read_bytes(), path.with_suffix(".episodes.npy").read_bytes()) == before
    failed = json.loads(path.with_suffix(".failed.json").read_text())
    assert failed["status"] == "failed" and "simulated device fault" in failed["error"]
    # The next run still counts the finished record; a later success removes the failure.
    assert "0 cell(s) run, 1 already recorded" in call(*RANDOM, "--out", runs, "--no-progress").out
    monkeypatch.undo()
    assert call(*RANDOM, "--out", runs, "--force", "--no-progress").code == 0
    assert not path.with_suffix(".failed.json").exists()


DAMAGES = {
    "non-UTF-8 record": lambda path: path.write_bytes(b"\xff\xfe{" + path.read_bytes()[1:]),
    "non-object record": lambda path: path.write_text("[1, 2, 3]"),
    "truncated episodes": lambda path: path.with_suffix(".episodes.npy").write_bytes(
        path.with_suffix(".episodes.npy").read_bytes()[:100]),
    "episodes of another length": lambda path: np.save(path.with_suffix(".episodes.npy"), np.zeros(3)),
    "null accuracy": lambda path: path.write_text(json.dumps({**json.loads(path.read_text()), "accuracy": None})),
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_record_is_rerun_and_reported_as_missing(runs, damage, tmp_path):
    path = record_of(runs, "random")
    DAMAGES[damage](path)
    report = call("report", "--suite", "quickstart", "--profile", "smoke", "--runs", runs, "--out", tmp_path / "rep")
    assert report.code == 0 and "Traceback" not in report.err
    assert str(path) in report.err and "counts as missing" in report.err
    result = call(*RANDOM, "--out", runs, "--no-progress")
    assert result.code == 0 and "1 cell(s) run" in result.out
    assert f"{path}: " in result.err and "the cell runs again" in result.err
    assert json.loads(path.read_text())["status"] == "ok"


COMPARE = {
    "missing sha": (lambda r: r["test_episodes"].pop("sha"), "'test_episodes' lacks its 'sha'"),
    "null accuracy": (lambda r: r.update(accuracy=None), "'accuracy' lacks a numeric mean"),
    "other episode count": (lambda r: r["test_episodes"].update(count=5), "'test_episodes.count' 5 differs"),
    "no status": (lambda r: r.pop("status"), "status None"),
}


@pytest.mark.parametrize("edit", COMPARE)
def test_compare_names_what_a_hand_edited_record_lacks(recorded, edit, tmp_path):
    good = record_of(recorded, "random")
    record = json.loads(good.read_text())
    COMPARE[edit][0](record)
    edited = tmp_path / good.name
    edited.write_text(json.dumps(record))
    shutil.copy(good.with_suffix(".episodes.npy"), tmp_path)
    assert_one_line_error(call("compare", record_of(recorded, "average"), edited), str(edited), COMPARE[edit][1])


def test_records_of_other_data_are_not_counted_as_done(runs):
    path = record_of(runs, "random")
    record = json.loads(path.read_text())
    path.write_text(json.dumps({**record, "dataset_fingerprint": "0123456789abcdef"}))
    assert_one_line_error(call(*RANDOM, "--out", runs), str(path), "made on other data", "--force")
    assert call(*RANDOM, "--out", runs, "--force", "--no-progress").code == 0


def test_records_of_another_teacher_pool_are_not_counted_as_done(runs):
    path = record_of(runs, "average")
    record = json.loads(path.read_text())
    path.write_text(json.dumps({**record, "pool": {**record["pool"], "key": "0123456789abcdef"}}))
    assert_one_line_error(call(*SMOKE, "--method", "average", "--out", runs), str(path), "other teacher pool")


def test_report_refuses_records_of_different_data(runs, tmp_path):
    path = record_of(runs, "random")
    path.write_text(json.dumps({**json.loads(path.read_text()), "dataset_fingerprint": "0123456789abcdef"}))
    assert_one_line_error(call("report", "--suite", "quickstart", "--profile", "smoke", "--runs", runs,
                               "--out", tmp_path / "rep"), "records of glyphs were made on different data")


def test_records_of_another_thread_count_are_named(runs, tmp_path):
    path = record_of(runs, "random")
    record = json.loads(path.read_text())
    record["environment"]["device_name"] = "cpu: x86_64, 7 threads"
    path.write_text(json.dumps(record))
    result = call(*RANDOM, "--out", runs, "--no-progress")
    assert result.code == 0 and "1 already recorded" in result.out
    (line,) = [line for line in result.err.splitlines() if "7 threads" in line]
    assert line.startswith("dfmlbench: note: ") and "differ in the last digits" in line
    report = call("report", "--suite", "quickstart", "--profile", "smoke", "--runs", runs, "--out", tmp_path / "rep")
    assert report.code == 0 and "devices or thread counts" in report.err


# --- FREE checkpoints: a damaged one is discarded, --force ignores them -------------------------

def free_cell_artifacts(out: Path) -> Path:
    from dfmlbench.config import load_suite, resolve
    from dfmlbench.planning import cell_stem, expand_cells

    (cell,) = expand_cells(resolve(load_suite("quickstart"), "smoke", []), ["free"])
    return cell_stem(out, cell).with_suffix(".artifacts")


@pytest.mark.parametrize("content", [b"", b"garbage, not a checkpoint", b"PK\x03\x04truncated"])
def test_a_damaged_checkpoint_is_named_discarded_and_the_cell_restarts(content, tmp_path):
    checkpoint = free_cell_artifacts(tmp_path / "runs") / "checkpoint.pt"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(content)
    result = call(*SMOKE, "--method", "free", "--out", tmp_path / "runs", "--no-progress")
    assert result.code == 0, result.err
    (line,) = [line for line in result.err.splitlines() if "checkpoint" in line]
    assert str(checkpoint) in line and "starts again from epoch 1" in line
    assert not checkpoint.exists()


def test_force_ignores_a_checkpoint(tiny_pool, tmp_path):
    from dfmlbench.method import RunContext
    from dfmlbench.methods import create_method
    from dfmlbench.methods.free import FreeTraining

    method = create_method("free", {**create_method("free").smoke_settings, "epochs": 2, "checkpoint_interval": 1})

    def resumed(resume: bool) -> tuple[FreeTraining, int]:
        ctx = RunContext(torch.device("cpu"), 0, method.settings, "conv4", 32, 3, 5, 1, tmp_path,
                         validator=lambda learner: 0.0, resume=resume)
        return ctx.checkpoints.resume(lambda: FreeTraining(method.settings, tiny_pool, ctx), "epoch")

    first, _ = resumed(True)
    first.ctx.checkpoints.save(2, first)  # as if killed after epoch 2
    assert resumed(True)[1] == 3
    forced, first_epoch = resumed(False)
    assert first_epoch == 1 and "resumed_from_epoch" not in forced.ctx.info
    assert not (tmp_path / "checkpoint.pt").exists()
