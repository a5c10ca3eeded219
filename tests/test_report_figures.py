"""Figures 4-7 (plain data -> deterministic PNGs) and the teacher-feature analysis behind Fig. 4."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from matplotlib.image import imread

from dfmlbench.analysis.teacher_features import teacher_features
from dfmlbench.errors import UserError
from dfmlbench.models import build_model
from dfmlbench.pool.store import Teacher
from dfmlbench.reporting.figures import (_aggregate, moving_average, plot_accuracy_vs_cost, plot_accuracy_vs_teachers,
                                         plot_curves, plot_task_grid, plot_teacher_tsne)
from dfmlbench.reporting.report import RECOVERY_BUDGETS_SECONDS, _accuracy_at_budgets, _cost_curve

PNG = b"\x89PNG\r\n\x1a\n"


def _twice(tmp_path, draw):
    """Draw into two fresh nested folders; both must be the same valid PNG."""
    first = draw(tmp_path / "a" / "b" / "fig.png")
    second = draw(tmp_path / "c" / "fig.png")
    assert first == tmp_path / "a" / "b" / "fig.png"
    data = first.read_bytes()
    assert data.startswith(PNG)
    assert data == second.read_bytes()
    assert not [p for p in first.parent.iterdir() if p.name.endswith(".tmp")]
    return data


def test_tsne_figure_is_a_deterministic_png(tmp_path):
    features = np.random.default_rng(0).normal(size=(3, 5, 8)).astype(np.float32)
    names = ["teacher 0", "teacher 1", "teacher 2"]
    _twice(tmp_path, lambda p: plot_teacher_tsne(features, names, p, seed=3))


def test_tsne_rejects_too_few_points_and_mismatched_names(tmp_path):
    with pytest.raises(ValueError, match="at least 5 points"):
        plot_teacher_tsne(np.zeros((2, 2, 4)), ["a", "b"], tmp_path / "x.png")
    with pytest.raises(ValueError, match="teacher names"):
        plot_teacher_tsne(np.zeros((2, 4, 4)), ["a"], tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_curves_aggregate_the_union_of_steps():
    steps, mean, sd, count = _aggregate([[(0, 1.0), (1, 2.0)], [(0, 3.0), (2, 5.0)]])
    assert steps.tolist() == [0, 1, 2]
    assert mean.tolist() == [2.0, 2.0, 5.0]
    assert count.tolist() == [2, 1, 1]
    assert sd[0] == pytest.approx(np.sqrt(2.0)) and sd[1] == sd[2] == 0.0


def test_moving_average_is_centred_and_keeps_every_point():
    values = np.array([0.0, 3.0, 6.0, 9.0])
    assert moving_average(values, 1).tolist() == values.tolist()
    assert moving_average(values, 3).tolist() == pytest.approx([1.5, 3.0, 6.0, 7.5])


def test_curves_one_run_and_several_runs(tmp_path):
    rng = np.random.default_rng(1)
    noisy = [[(s, float(v)) for s, v in enumerate(np.sin(np.arange(60) / 9) + rng.normal(0, .3, 60))]]
    seeds = [[(s, 0.1 * s + k) for s in range(0, 40, step)] for k, step in enumerate((2, 3, 5))]
    series = {"FREE (BELL)": seeds, "ERM": noisy}
    _twice(tmp_path / "many", lambda p: plot_curves(series, p, xlabel="step", ylabel="inner product",
                                                     title="gradient inner product"))
    one = _twice(tmp_path / "one", lambda p: plot_curves({"ERM": noisy}, p, xlabel="step",
                                                          ylabel="inner product", title="t"))
    assert one != (tmp_path / "many" / "a" / "b" / "fig.png").read_bytes()
    with pytest.raises(ValueError, match="no points"):
        plot_curves({"x": [[]]}, tmp_path / "e.png", xlabel="a", ylabel="b", title="c")


def test_accuracy_vs_teachers_draws_one_panel_per_shot(tmp_path):
    pts = {"FREE": [(1, 40.0, 0.8), (10, 45.0, 0.8), (100, 50.0, 0.7)],
           "DRO": [(1, 38.0, 0.9), (10, 41.0, 0.8), (100, 42.0, 0.8)]}
    _twice(tmp_path, lambda p: plot_accuracy_vs_teachers({5: pts, 1: pts}, p))
    single = plot_accuracy_vs_teachers({1: pts}, tmp_path / "one.png")
    two_wide = imread(tmp_path / "a" / "b" / "fig.png").shape[1]
    assert two_wide > 1.5 * imread(single).shape[1]


def test_accuracy_vs_cost_draws_every_run(tmp_path):
    free = [[(10.0 * k, 25.0 * k, 40.0 + k) for k in range(1, 9)], [(9.0 * k, 24.0 * k, 41.0 + k) for k in range(1, 9)]]
    purer = [[(60.0 * k, 70.0 * k, 38.0 + 2 * k) for k in range(1, 6)]]
    _twice(tmp_path, lambda p: plot_accuracy_vs_cost({"FREE_5": free, "PURER": purer}, p, title="t"))
    with pytest.raises(ValueError, match="empty run"):
        plot_accuracy_vs_cost({"x": [[]]}, tmp_path / "e.png", title="t")


def test_cost_curves_join_validation_points_by_step_and_budgets_take_the_last_within():
    curves = {"val_accuracy": [[5, 40.0], [10, 45.0], [15, 47.0]],
              "recovery_seconds": [[5, 50.0], [10, 130.0], [15, 200.0]],
              "train_seconds": [[5, 90.0], [10, 200.0]]}  # step 15 logged no training time
    run = _cost_curve(curves)
    assert run == [(50.0, 90.0, 40.0), (130.0, 200.0, 45.0)]
    assert RECOVERY_BUDGETS_SECONDS == (60, 180, 600)
    # 60 s: the point at 50 s; 180 s: the one at 130 s, and the run ended there (*); a second
    # run that first validates after 60 s leaves the 60 s budget without a value for all
    late = [(70.0, 100.0, 30.0), (700.0, 900.0, 50.0)]
    assert _accuracy_at_budgets([run]) == ["40.00", "45.00*", "45.00*"]
    assert _accuracy_at_budgets([run, late]) == ["–", "37.50*", "37.50*"]


def test_task_grid_is_relabelled_and_a_missing_grid_is_a_user_error(tmp_path):
    from torchvision.utils import save_image
    way, per_class = 3, 4
    images = torch.rand(way * per_class, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    grid = tmp_path / "grid.png"
    save_image(images, grid, nrow=per_class, padding=1)
    _twice(tmp_path, lambda p: plot_task_grid(grid, p, way=way, per_class=per_class, title="task"))
    with pytest.raises(UserError, match="missing.*rerun the cell"):
        plot_task_grid(tmp_path / "nope.png", tmp_path / "o.png", way=way, per_class=4, title="t")


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_teacher_features_are_the_teachers_embeddings(tiny_pool, glyphs):
    before = [_state(t.model) for t in tiny_pool]
    tiny_pool[1].model.train()  # a teacher left in train mode must be put back in train mode
    try:
        out = teacher_features(tiny_pool, glyphs, num_teachers=3, num_images=4, seed=5)
        assert tiny_pool[1].model.training and not tiny_pool[0].model.training
    finally:
        tiny_pool[1].model.eval()
    assert out.features.shape == (3, 4, out.features.shape[2]) and out.features.dtype == np.float32
    assert out.teacher_indices == [0, 1, 2] and out.teacher_archs == ["conv4"] * 3
    assert out.class_id in glyphs.splits["train"]
    assert out.class_name == glyphs.class_names[out.class_id]
    assert all(glyphs.labels[i] == out.class_id for i in out.image_indices)
    assert len(set(out.image_indices)) == 4
    x = glyphs.normalize(glyphs.images[out.image_indices])
    with torch.no_grad():
        for t in range(3):
            direct = tiny_pool[t].model.embed(x).numpy()  # eval mode: BN running statistics
            np.testing.assert_allclose(out.features[t], direct, rtol=1e-5, atol=1e-6)
    assert not np.allclose(out.features[0], out.features[1])
    for teacher, state in zip(tiny_pool, before):
        assert all(torch.equal(v, teacher.model.state_dict()[k]) for k, v in state.items())

    again = teacher_features(tiny_pool, glyphs, num_teachers=3, num_images=4, seed=5)
    assert again.image_indices == out.image_indices and np.array_equal(again.features, out.features)
    other = teacher_features(tiny_pool, glyphs, num_teachers=3, num_images=4, seed=6)
    assert (other.class_id, other.image_indices) != (out.class_id, out.image_indices)


def test_teacher_features_refuse_what_the_pool_or_data_cannot_give(tiny_pool, glyphs):
    with pytest.raises(UserError, match="has 4 teachers, 9 were asked for"):
        teacher_features(tiny_pool, glyphs, num_teachers=9)
    with pytest.raises(UserError, match="lower num_images"):
        teacher_features(tiny_pool, glyphs, num_teachers=1, num_images=10_000)
    resnet = build_model("resnet10", 5, tiny_pool.image_size, tiny_pool.in_channels).eval()
    mixed = dataclasses.replace(tiny_pool, teachers=[
        tiny_pool[0], Teacher(1, "resnet10", resnet, *dataclasses.astuple(tiny_pool[0])[3:])])
    with pytest.raises(UserError, match="single-architecture pool"):
        teacher_features(mixed, glyphs, num_teachers=2, num_images=3)
