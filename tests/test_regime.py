"""The teacher-regime indicators (issue 17): norm over re-derived init, pairwise cosine, steps;
stored per teacher in the manifest, summarised on the pool, backfilled for older pools, shown by
`pool show`; and the random-scaled control."""

from __future__ import annotations

import json
import math

import pytest
import torch

from dfmlbench.cli import main
from dfmlbench.config import load_suite, resolve
from dfmlbench.models import build_model
from dfmlbench.pool import PoolSpec, backfill_regime, build_pool, load_pool
from dfmlbench.pool.pretrain import (PretrainSettings, derive_seed, pretrain_teacher, split_train_heldout,
                                     teacher_classes)
from dfmlbench.pool.regime import (REGIME_FIELD, initial_state, layer_weights, pairwise_cosine, pool_regime,
                                   steps_taken, teacher_regime)
from dfmlbench.pool.store import MANIFEST


def test_the_init_is_re_derived_exactly_as_pretraining_drew_it(glyphs):
    """Zero epochs of training: the kept weights are the init, so every norm ratio is 1."""
    untrained = build_model("conv4", 5, glyphs.image_size, glyphs.channels,
                            generator=torch.Generator().manual_seed(derive_seed("teacher", 0, 3)))
    rederived = initial_state("conv4", 5, glyphs.image_size, glyphs.channels, pool_seed=0, index=3)
    for name, tensor in untrained.state_dict().items():
        assert torch.equal(tensor, rederived[name]), name
    regime = teacher_regime(untrained.state_dict(), rederived, steps=0)
    assert set(regime["norm_ratio"]) == set(layer_weights(rederived)) and len(regime["norm_ratio"]) == 5
    assert all(r == 1.0 for r in regime["norm_ratio"].values())


def test_pretraining_counts_its_steps_to_the_kept_weights(glyphs):
    classes = teacher_classes(glyphs.splits["train"], 5, 0, 0)
    train_images = len(split_train_heldout(glyphs, classes)[0])  # 240: 2 batches of 128 per epoch
    for select in ("best", "final"):
        trained = pretrain_teacher(glyphs, classes, "conv4", PretrainSettings(epochs=3, select=select), seed=1)
        assert trained.steps == steps_taken(train_images, 128, 3, trained.best_epoch, select)
    assert steps_taken(240, 128, 3, best_epoch=0, select="best") == 2
    assert steps_taken(240, 128, 3, best_epoch=0, select="final") == 6


def test_pairwise_cosine_is_one_for_copies_and_near_zero_for_independent_inits():
    states = [build_model("conv4", 5, 32, 3, generator=torch.Generator().manual_seed(s)).state_dict()
              for s in range(4)]
    same = pairwise_cosine([states[0], {k: 2 * v for k, v in states[0].items()}])
    assert all(c == pytest.approx(1.0, abs=1e-4) for c in same.values())
    independent = pairwise_cosine(states)
    assert all(abs(c) < 0.1 for c in independent.values())
    assert pairwise_cosine(states[:1]) == {}


def test_a_built_pool_stores_the_regime_per_teacher_and_summarises_it(glyphs, tmp_path):
    spec = PoolSpec(num_teachers=3, epochs=2, seed=5)
    build_pool(glyphs, spec, tmp_path)
    entries = json.loads((tmp_path / MANIFEST).read_text())["teachers"]
    for index, entry in enumerate(entries):
        final = {k: v for k, v in load_pool(tmp_path, 3).teachers[index].model.state_dict().items()}
        initial = initial_state("conv4", 5, glyphs.image_size, glyphs.channels, 5, index)
        expected = {n: float(w.norm() / initial[n].norm()) for n, w in layer_weights(final).items()}
        assert entry[REGIME_FIELD]["norm_ratio"] == pytest.approx(expected, abs=1e-3)
        assert entry[REGIME_FIELD]["steps"] == 2 * (entry["best_epoch"] + 1)  # 240 images: 2 steps per epoch
    summary = load_pool(tmp_path, 3).metadata["regime"]
    assert summary["teachers"] == 3 and set(summary["norm_ratio"]) == set(entries[0][REGIME_FIELD]["norm_ratio"])
    means = [s["mean"] for s in summary["norm_ratio"].values()]
    assert summary["norm_ratio_mean"] == pytest.approx(sum(means) / len(means), abs=1e-3)
    assert -1 <= summary["pairwise_cosine_mean"] <= 1 and summary["steps"]["min"] >= 2


def test_an_older_pool_is_backfilled_with_the_same_indicators(glyphs, tmp_path):
    spec = PoolSpec(num_teachers=2, epochs=2, seed=6)
    build_pool(glyphs, spec, tmp_path)
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    built = [entry.pop(REGIME_FIELD) for entry in manifest["teachers"]]  # as a pool from before the field
    (tmp_path / MANIFEST).write_text(json.dumps(manifest))
    backfill_regime(glyphs, spec, tmp_path)
    backfilled = [e[REGIME_FIELD] for e in json.loads((tmp_path / MANIFEST).read_text())["teachers"]]
    for a, b in zip(built, backfilled):
        assert a["steps"] == b["steps"] and a["norm_ratio"] == pytest.approx(b["norm_ratio"], abs=1e-4)


def test_a_brought_in_pool_without_inits_still_gets_cosines(tiny_pool):
    entries = [{"arch": t.arch} for t in tiny_pool]  # no regime field: an outside pool
    summary = pool_regime(entries, [t.model.state_dict() for t in tiny_pool])
    assert summary["norm_ratio_mean"] is None and summary["steps"] is None
    assert summary["pairwise_cosine"] and not math.isnan(summary["pairwise_cosine_mean"])


def test_pool_show_prints_the_indicators_and_builds_nothing(glyphs, tiny_pool, capsys):
    smoke = ["--suite", "quickstart", "--profile", "smoke"]
    assert main(["pool", "show", *smoke, "--method", "average"]) == 0
    out = capsys.readouterr().out
    assert "weight norm / init norm" in out and "pairwise cosine" in out and "| features.0.0.weight |" in out
    assert main(["pool", "show", *smoke, "--method", "average", "--set", "pool.seed=99"]) == 0
    assert "not built (0/" in capsys.readouterr().out
    assert main(["pool", "show", *smoke, "--method", "random"]) == 0
    assert "no method of these cells uses teachers" in capsys.readouterr().out


def test_random_scaled_has_randoms_directions_and_the_averages_norms(tiny_pool, tmp_path):
    from dfmlbench.adaptation import parameters_of
    from dfmlbench.method import RunContext
    from dfmlbench.methods import create_method
    from dfmlbench.methods.average import average_state

    ctx = RunContext(torch.device("cpu"), 0, {}, "conv4", 32, 3, 5, 1, tmp_path)
    random_model = create_method("random", {}).fit(None, ctx).model
    scaled = create_method("random-scaled", {}).fit(tiny_pool, ctx)
    average = average_state([t.model.state_dict() for t in tiny_pool])
    for name, param in parameters_of(scaled.model).items():
        start = parameters_of(random_model)[name]
        if float(start.norm()) == 0:
            assert torch.equal(param, start) and name in ctx.info["unscaled_tensors"]
            continue
        assert float(param.norm()) == pytest.approx(float(average[name].norm()), rel=1e-4), name
        cosine = torch.nn.functional.cosine_similarity(param.flatten(), start.flatten(), dim=0)
        assert float(cosine) == pytest.approx(1.0, abs=1e-5), name
    assert ctx.info["scale_per_tensor"]


def test_random_scaled_runs_beside_average_in_table2():
    assert "random-scaled" in resolve(load_suite("table2"), "cpu", [])["methods"]


def test_reports_name_each_pool_with_its_regime_once():
    from dfmlbench.reporting.pools import pool_rows

    summary = {"teachers": 2, "norm_ratio_mean": 1.2345, "pairwise_cosine_mean": 0.00123,
               "steps": {"mean": 21.4, "min": 7, "max": 40}}

    def record(key, regime, select="best", dataset="omniglot", teachers=2):
        return {"dataset": dataset, "config": {"pool": {"select": select}},
                "pool": {"key": key, "num_teachers": teachers, "mean_heldout_acc": 98.56, "regime": regime}}

    rows = pool_rows([record("a", None), record("a", summary), record("b", None, "final"), {"pool": None},
                      record("m", {"omniglot": summary, "glyphs": None}, dataset="mix-small")])
    body = rows[2:]
    assert len(body) == 3  # one row per pool key (a's regime from the record that has it)
    assert body[0] == "| mix-small: omniglot | `m` | best epoch | 2 | 98.6% (all domains) | 21 (7-40) | 1.234 | 0.0012 |"
    assert body[1] == "| omniglot | `a` | best epoch | 2 | 98.6% | 21 (7-40) | 1.234 | 0.0012 |"
    assert body[2].startswith("| omniglot | `b` | final epoch | 2 | 98.6% | not recorded")
    assert all(row.count("|") == rows[0].count("|") for row in rows)
    assert pool_rows([{"pool": None}]) == []
    # a smaller pool of one key (fig6's sizes) is a pool of its own, with its own regime
    sizes = pool_rows([record("a", summary, teachers=10), record("a", summary, teachers=5)])[2:]
    assert [row.split(" | ")[3] for row in sizes] == ["5", "10"]
