"""OTA (optimal-transport alignment + average) and DRO (reconstructed hyper-network fusion)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from dfmlbench.adaptation import parameters_of
from dfmlbench.errors import UserError
from dfmlbench.fusion import (align_to_anchor, channel_graph, mean_state, permute_state,
                              solve_permutation)
from dfmlbench.method import RunContext
from dfmlbench.methods import METHODS, create_method
from dfmlbench.methods.dro import adversarial_embeddings, build_hypernet, per_teacher_loss
from dfmlbench.models import build_model
from dfmlbench.pool import Teacher, TeacherPool

TINY_DRO = {"steps": 3, "ascent_steps": 2, "hidden": 16, "embedding_dim": 8, "gamma_grid": [0.1, 1.0],
            "curve_points": 2}


def make_ctx(tmp_path, seed=0, validator=None):
    return RunContext(torch.device("cpu"), seed, {}, "conv4", 32, 3, 5, 1, tmp_path, validator)


def random_teacher(arch: str, size: int, seed: int) -> torch.nn.Module:
    """A model whose BN entries are all informative, so a wrong permutation of any would show."""
    model = build_model(arch, 5, size, 3, generator=torch.Generator().manual_seed(seed)).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.copy_(0.5 + torch.rand(module.num_features, generator=g))
                module.bias.copy_(torch.randn(module.num_features, generator=g))
                module.running_mean.copy_(torch.randn(module.num_features, generator=g))
                module.running_var.copy_(0.5 + torch.rand(module.num_features, generator=g))
    return model


@pytest.fixture(scope="module")
def random_pool(tmp_path_factory):
    """Four untrained conv4 teachers with informative BN entries (no pre-training: fast)."""
    teachers = [Teacher(i, "conv4", random_teacher("conv4", 32, seed=10 * i).requires_grad_(False),
                        list(range(5 * i, 5 * i + 5)), [f"c{c}" for c in range(5 * i, 5 * i + 5)],
                        heldout_acc=acc, sha256="")
                for i, acc in enumerate([40.0, 80.0, 60.0, 80.0])]  # a tie: lowest index is the anchor
    return TeacherPool(teachers, "random", 32, 3, (0.5,) * 3, (0.25,) * 3, tmp_path_factory.mktemp("pool"))


def test_registry_lists_ota_and_dro():
    assert {"ota", "dro"} <= set(METHODS.names())
    assert "(reconstructed)" in METHODS.get("dro").summary


@pytest.mark.parametrize("seed", range(5))
def test_emd_and_assignment_give_the_same_permutation(seed):
    cost = torch.rand(32, 32, generator=torch.Generator().manual_seed(seed))
    emd, assignment = solve_permutation(cost, "emd"), solve_permutation(cost, "assignment")
    assert sorted(emd.tolist()) == list(range(32))
    assert emd.tolist() == assignment.tolist()


def test_solvers_agree_on_whole_teachers(random_pool):
    anchor = random_pool.most_accurate()
    graph = channel_graph(anchor.model)
    other = next(t for t in random_pool if t is not anchor)
    _, by_emd = align_to_anchor(other.model.state_dict(), anchor.model.state_dict(), graph, "emd")
    _, by_assignment = align_to_anchor(other.model.state_dict(), anchor.model.state_dict(), graph, "assignment")
    for name in by_emd:
        assert torch.equal(by_emd[name], by_assignment[name]), name


@pytest.mark.parametrize("arch, size, solver, cost", [("conv4", 32, "emd", "weights"),
                                                     ("conv4", 32, "assignment", "weights+bn"),
                                                     ("resnet10", 16, "emd", "weights")])
def test_alignment_undoes_a_channel_permutation_of_every_hidden_layer(arch, size, solver, cost):
    model = random_teacher(arch, size, seed=0)
    graph = channel_graph(model)
    original = model.state_dict()
    g = torch.Generator().manual_seed(1)
    perms = {s.name: torch.randperm(s.width, generator=g) for s in graph.spaces}
    permuted = build_model(arch, 5, size, 3).eval()
    permuted.load_state_dict(permute_state(original, graph, perms))

    x = torch.randn(6, 3, size, size, generator=g)
    with torch.no_grad():  # a channel permutation is a symmetry: the function is unchanged
        # up to float32 rounding of the reordered channel sums: up to ~3e-6 on logits up to ~7
        # across vector widths and thread counts; a wrong permutation changes logits by O(1)
        torch.testing.assert_close(permuted(x), model(x), rtol=1e-5, atol=3e-5)
    assert not torch.equal(permuted.state_dict()["classifier.weight"], original["classifier.weight"])

    aligned, recovered = align_to_anchor(permuted.state_dict(), original, graph, solver, cost)
    for space in graph.spaces:
        assert torch.equal(recovered[space.name], torch.argsort(perms[space.name])), space.name
    for key, value in original.items():
        assert torch.equal(aligned[key], value), key


@pytest.mark.parametrize("arch", ["conv4", "resnet10", "resnet18"])
def test_graph_permutes_every_channel_entry_but_the_head_rows(arch):
    model = build_model(arch, 5, 32, 3)
    graph = channel_graph(model)
    untouched = set(model.state_dict()) - graph.keys()
    assert untouched == {"classifier.bias"} | {k for k in model.state_dict() if k.endswith("num_batches_tracked")}


def test_ota_averages_teachers_aligned_to_the_most_accurate(random_pool, tmp_path):
    ctx = make_ctx(tmp_path)
    learner = create_method("ota").fit(random_pool, ctx)
    anchor = random_pool.most_accurate()
    assert ctx.info["anchor_index"] == anchor.index
    graph = channel_graph(anchor.model)
    aligned = [t.model.state_dict() if t is anchor else
               align_to_anchor(t.model.state_dict(), anchor.model.state_dict(), graph)[0] for t in random_pool]
    expected = mean_state(aligned)
    for name, value in parameters_of(learner.model).items():
        torch.testing.assert_close(value, expected[name])
    assert ctx.info["mean_distance_to_anchor_after"] < ctx.info["mean_distance_to_anchor_before"]
    assert learner.model.classifier.weight.shape == anchor.model.classifier.weight.shape


def test_ota_accuracy_weighting_weights_by_heldout_accuracy(random_pool, tmp_path):
    ctx = make_ctx(tmp_path)
    learner = create_method("ota", {"weighting": "accuracy"}).fit(random_pool, ctx)
    # The head rows are never permuted: their weighted mean is a direct check of the weights.
    acc = torch.tensor([t.heldout_acc for t in random_pool], dtype=torch.float64)
    rows = torch.stack([t.model.classifier.bias.double() for t in random_pool])
    expected = (acc[:, None] * rows).sum(0) / acc.sum()
    torch.testing.assert_close(learner.model.classifier.bias.double(), expected)


@pytest.mark.parametrize("name", ["ota", "dro"])
def test_mixed_architectures_are_a_user_error(random_pool, tmp_path, name):
    other = dataclasses.replace(random_pool[-1], arch="resnet10")
    mixed = dataclasses.replace(random_pool, teachers=[*random_pool.teachers[:-1], other])
    with pytest.raises(UserError, match="one architecture"):
        create_method(name, TINY_DRO if name == "dro" else {}).fit(mixed, make_ctx(tmp_path))


def test_dro_ascent_raises_the_loss_and_stays_in_its_lagrangian_ball():
    g = torch.Generator().manual_seed(0)
    hypernet = build_hypernet(8, 32, 40, g)
    z, targets = torch.randn(6, 8, generator=g), torch.randn(6, 40, generator=g)
    clean = per_teacher_loss(hypernet(z), targets)
    distances = {}
    for gamma in (0.3, 3.0):
        z_adv = adversarial_embeddings(hypernet, z, targets, gamma, step_size=0.1, steps=5)
        robust = per_teacher_loss(hypernet(z_adv), targets)
        moved = ((z_adv - z) ** 2).sum(1)
        assert torch.all(robust > clean)
        # The penalised objective rose, so the squared transport cost is paid for by the gain.
        assert torch.all(robust - gamma * moved >= clean)
        assert torch.all(moved <= (robust - clean) / gamma)
        distances[gamma] = moved.mean()
    assert distances[3.0] < distances[0.3]  # a larger multiplier is a smaller ball
    assert torch.equal(adversarial_embeddings(hypernet, z, targets, 1.0, 0.1, steps=0), z)


def test_dro_chooses_gamma_on_meta_val_and_yields_a_finite_model(random_pool, tmp_path):
    scores = iter([40.0, 55.0])
    ctx = make_ctx(tmp_path, validator=lambda learner: next(scores))
    learner = create_method("dro", TINY_DRO).fit(random_pool, ctx)
    assert ctx.info["reconstructed"] is True
    assert ctx.info["val_accuracy_by_gamma"] == {"0.1": 40.0, "1.0": 55.0}
    assert ctx.info["gamma"] == 1.0
    assert "reconstructed" in learner.description
    assert {"dro/gamma=0.1/loss", "dro/gamma=1/loss"} <= set(ctx.curves)
    learner.model.train()  # batch-statistics BN, as at meta-test
    out = learner.model(torch.randn(10, 3, 32, 32))
    assert out.shape == (10, 5) and torch.isfinite(out).all()


def test_dro_is_reproducible_and_samples_per_task(random_pool, tmp_path):
    settings = {**TINY_DRO, "gamma_grid": [1.0], "init": "sample-per-task"}
    a = create_method("dro", settings).fit(random_pool, make_ctx(tmp_path))
    b = create_method("dro", settings).fit(random_pool, make_ctx(tmp_path))
    for name, value in parameters_of(a.model).items():
        assert torch.equal(value, parameters_of(b.model)[name])
    first, second = a.init_for_episode(0), a.init_for_episode(1)
    assert not torch.equal(first["classifier.weight"], second["classifier.weight"])
    assert torch.equal(first["classifier.weight"], b.init_for_episode(0)["classifier.weight"])


def test_dro_rejects_a_diverging_ascent(random_pool, tmp_path):
    with pytest.raises(UserError, match="diverge"):
        create_method("dro", {**TINY_DRO, "gamma_grid": [10.0]}).fit(random_pool, make_ctx(tmp_path))
