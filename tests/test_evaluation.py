import numpy as np
import torch

from dfmlbench.adaptation import parameters_of, sgd_adapt
from dfmlbench.episodes import make_episodes
from dfmlbench.evaluation import AdaptProtocol, evaluate
from dfmlbench.learner import Learner
from dfmlbench.models import build_model, copy_parameters
from dfmlbench.stats import paired_test, summarize
from numerics import Float64Images, assert_same_meta_test
from oracles import evaluate_reference


def learner_from(pool_teacher=None, seed=0):
    model = build_model("conv4", batch_stat_bn=True, zero_head_bias=True,
                        generator=torch.Generator().manual_seed(seed))
    if pool_teacher is not None:
        copy_parameters(model, pool_teacher.model.state_dict())
    return Learner(model)


def test_evaluation_of_a_teacher_init_equals_one_episode_at_a_time(glyphs, tiny_pool, monkeypatch):
    episodes = make_episodes(glyphs, "test", 5, 1, 15, 12, seed=3)
    learner, data = learner_from(tiny_pool[0]), Float64Images(glyphs)
    learner.model.double()
    accuracies = assert_same_meta_test(
        monkeypatch, lambda: evaluate(learner, data, episodes, AdaptProtocol(10, 0.01), chunk=5),
        lambda: evaluate_reference(learner, data, episodes, AdaptProtocol(10, 0.01)))
    assert accuracies.shape == (12,)


def test_chunking_does_not_change_results(glyphs, monkeypatch):
    episodes = make_episodes(glyphs, "test", 5, 1, 5, 7)
    learner, data = learner_from(), Float64Images(glyphs)
    learner.model.double()
    assert_same_meta_test(monkeypatch, lambda: evaluate(learner, data, episodes, chunk=7),
                          lambda: evaluate(learner, data, episodes, chunk=3))


def test_functional_sgd_matches_torch_optim_sgd():
    model = build_model("conv4", batch_stat_bn=True, generator=torch.Generator().manual_seed(0))
    x, y = torch.randn(10, 3, 32, 32), torch.arange(5).repeat(2)
    adapted = sgd_adapt(model, parameters_of(model), x, y, steps=3, lr=0.01)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(3):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    for name, p in model.named_parameters():
        torch.testing.assert_close(adapted[name], p.detach(), rtol=1e-4, atol=1e-5)


def test_adaptation_helps_on_real_episodes(glyphs):
    """10 SGD steps from a random init beat 0 steps: the protocol really adapts."""
    episodes = make_episodes(glyphs, "test", 5, 5, 5, 10)
    model = learner_from().model
    adapted = evaluate(Learner(model), glyphs, episodes).mean()
    frozen = evaluate(Learner(model, adapt_steps=0), glyphs, episodes).mean()
    assert adapted > frozen + 10


def test_head_matching_permutes_output_units(glyphs, tiny_pool):
    episodes = make_episodes(glyphs, "test", 5, 5, 5, 10)
    identity = evaluate(learner_from(tiny_pool[0]).__class__(learner_from(tiny_pool[0]).model,
                                                             adapt_steps=0), glyphs, episodes)
    matched = evaluate(Learner(learner_from(tiny_pool[0]).model, adapt_steps=0, head_matching=True),
                       glyphs, episodes)
    # Matching on the support can only help on average over episodes.
    assert matched.mean() >= identity.mean()


def test_per_episode_init_is_used(glyphs, monkeypatch):
    episodes = make_episodes(glyphs, "test", 5, 1, 5, 4)
    inits = [parameters_of(learner_from(seed=s).model.double()) for s in range(4)]
    learner = Learner(learner_from().model.double(), init_for_episode=lambda e: inits[e])
    data = Float64Images(glyphs)
    assert_same_meta_test(monkeypatch, lambda: evaluate(learner, data, episodes, chunk=4),
                          lambda: evaluate_reference(learner, data, episodes))


def test_summary_uses_population_std():
    acc = np.array([20.0, 40.0, 60.0, 80.0])
    summary = summarize(acc)
    assert summary.mean == 50.0
    assert np.isclose(summary.std, np.std(acc))  # ddof=0
    assert np.isclose(summary.ci95, 1.96 * np.std(acc) / 2)


def test_paired_test_detects_a_consistent_difference():
    rng = np.random.default_rng(0)
    a = rng.uniform(20, 60, 200)
    assert paired_test(a + 3 + rng.normal(0, 1, 200), a).p_value < 1e-6
    assert paired_test(a, a).p_value == 1.0


def test_sgd_adapt_gives_exact_second_order_maml_gradients():
    torch.manual_seed(0)
    model = build_model("conv4", batch_stat_bn=True)
    xs, ys = torch.randn(5, 3, 32, 32), torch.arange(5)
    xq, yq = torch.randn(10, 3, 32, 32), torch.arange(5).repeat(2)
    loss = torch.nn.functional.cross_entropy
    from dfmlbench.adaptation import forward
    params = dict(model.named_parameters())
    loss(forward(model, sgd_adapt(model, params, xs, ys, 2, 0.1), xq), yq).backward()
    # Reference: plain autograd with create_graph=True through the two inner steps.
    leaves = {k: v.detach().clone().requires_grad_() for k, v in params.items()}
    fast = dict(leaves)
    for _ in range(2):
        grads = torch.autograd.grad(loss(forward(model, fast, xs), ys), list(fast.values()), create_graph=True)
        fast = {k: v - 0.1 * g for (k, v), g in zip(fast.items(), grads)}
    loss(forward(model, fast, xq), yq).backward()
    for name, p in params.items():
        torch.testing.assert_close(p.grad, leaves[name].grad)
    # First order differs: the inner gradients are constants.
    first = {k: v.detach().clone().requires_grad_() for k, v in params.items()}
    loss(forward(model, sgd_adapt(model, first, xs, ys, 2, 0.1, first_order=True), xq), yq).backward()
    assert not torch.allclose(first["classifier.weight"].grad, params["classifier.weight"].grad)
