"""The baselines suite on real Omniglot images, end to end (smoke profile: seconds)."""

import json

from conftest import requires_omniglot
from dfmlbench.cli import main


@requires_omniglot
def test_baselines_on_omniglot_share_the_same_episodes(tmp_path, capsys):
    assert main(["run", "--suite", "baselines", "--profile", "smoke", "--out", str(tmp_path),
                 "--no-progress"]) == 0
    records = [json.loads(p.read_text()) for p in tmp_path.glob("baselines/smoke/*/*.json")]
    assert sorted(r["method"] for r in records) == ["average", "best-model", "random"]
    assert len({r["test_episodes"]["sha"] for r in records}) == 1  # paired: identical episodes
    for record in records:
        assert record["status"] == "ok" and record["dataset"] == "omniglot"
        assert 0 < record["accuracy"]["mean"] <= 100 and record["accuracy"]["n"] == 20
    out = capsys.readouterr().out
    assert "3 cell(s) run" in out and "| average | omniglot | 1 |" in out


@requires_omniglot
def test_free_run_records_recovery_time_curves_and_images(tmp_path, capsys):
    assert main(["run", "--suite", "free", "--profile", "smoke", "--method", "free",
                 "--out", str(tmp_path), "--no-progress"]) == 0
    (path,) = tmp_path.glob("free/smoke/free/*.json")
    record = json.loads(path.read_text())
    assert record["timings"]["recovery_seconds"] > 0
    assert record["timings"]["meta_train_seconds"] > 0
    assert {"grad_inner_product", "val_accuracy", "replay_tasks"} <= set(record["curves"])
    assert 0 <= record["extra_evaluations"]["last_epoch"]["mean"] <= 100
    assert record["method_info"]["bank_images"] > 0
    assert (path.with_suffix(".artifacts") / "recovered_task.png").is_file()
