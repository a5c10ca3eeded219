import pytest
import torch

from dfmlbench.adaptation import parameters_of
from dfmlbench.method import RunContext
from dfmlbench.methods import METHODS, create_method
from dfmlbench.methods.average import average_state


def make_ctx(tmp_path, seed=0, settings=None):
    return RunContext(torch.device("cpu"), seed, settings or {}, "conv4", 32, 3, 5, 1, tmp_path)


def test_registry_lists_the_baselines_and_variants():
    names = METHODS.names()
    for name in ("random", "best-model", "best-model-zero-step", "best-model-hungarian", "average"):
        assert name in names


def test_random_is_seeded_and_shared_across_episodes(tmp_path):
    a = create_method("random").fit(None, make_ctx(tmp_path, seed=0))
    b = create_method("random").fit(None, make_ctx(tmp_path, seed=0))
    c = create_method("random").fit(None, make_ctx(tmp_path, seed=1))
    assert a.init_for_episode is None
    assert torch.equal(a.model.classifier.weight, b.model.classifier.weight)
    assert not torch.equal(a.model.classifier.weight, c.model.classifier.weight)
    assert torch.all(a.model.classifier.bias == 0)


def test_random_reinit_gives_each_episode_its_own_init(tmp_path):
    learner = create_method("random-reinit").fit(None, make_ctx(tmp_path))
    first, second = learner.init_for_episode(0), learner.init_for_episode(1)
    assert not torch.equal(first["classifier.weight"], second["classifier.weight"])
    assert torch.equal(first["classifier.weight"], learner.init_for_episode(0)["classifier.weight"])


def test_best_model_loads_the_most_accurate_teacher(tiny_pool, tmp_path):
    ctx = make_ctx(tmp_path)
    learner = create_method("best-model").fit(tiny_pool, ctx)
    best = max(tiny_pool, key=lambda t: (t.heldout_acc, -t.index))
    assert ctx.info["teacher_index"] == best.index
    for name, value in parameters_of(learner.model).items():
        assert torch.equal(value, best.model.state_dict()[name])
    assert learner.adapt_steps is None and not learner.head_matching


@pytest.mark.parametrize("name, steps, matching", [("best-model-zero-step", 0, False),
                                                   ("best-model-hungarian", 0, True)])
def test_best_model_diagnostic_variants(tiny_pool, tmp_path, name, steps, matching):
    learner = create_method(name).fit(tiny_pool, make_ctx(tmp_path))
    assert learner.adapt_steps == steps and learner.head_matching == matching


def test_average_is_the_elementwise_mean_of_all_teachers(tiny_pool, tmp_path):
    learner = create_method("average").fit(tiny_pool, make_ctx(tmp_path))
    states = [t.model.state_dict() for t in tiny_pool]
    for name, value in parameters_of(learner.model).items():
        expected = torch.stack([s[name] for s in states]).mean(0)
        torch.testing.assert_close(value, expected)
    mean = average_state(states)
    assert set(mean) == set(states[0])  # running statistics are averaged too (harmless)


@pytest.mark.parametrize("name", ["free", "purer", "bidf-mkd"])
def test_replay_settings_share_one_vocabulary(name):
    """FREE, PURER and BiDf-MKD name every MAML-replay setting `replay_<field>`; a user's value
    reaches the replay, and no unprefixed twin (`inner_steps`, `first_order`...) is left."""
    from dataclasses import fields

    from dfmlbench.maml import REPLAY_PREFIX, ReplaySettings
    method = create_method(name, {"replay_inner_steps": 3, "replay_inner_lr": 0.02, "replay_query": 4})
    replay = ReplaySettings.from_settings(method.settings, 5, 1)
    assert (replay.inner_steps, replay.inner_lr, replay.query) == (3, 0.02, 4)
    shared = {"episode_batch"} if name == "bidf-mkd" else set()  # its meta-batch: events and replay alike
    assert not ({f.name for f in fields(ReplaySettings)} - shared) & set(method.settings)
    assert {"replay_inner_steps", "replay_inner_lr", "replay_query", "replay_first_order"} <= {
        key for key in method.settings if key.startswith(REPLAY_PREFIX)}
