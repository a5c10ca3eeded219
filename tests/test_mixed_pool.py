"""Multi-architecture pools (Table 4): a seeded architecture per teacher, each pre-trained with
its own optimiser, taken by the inversion methods as they are and refused by weight fusion."""

import pytest
import torch

from dfmlbench.errors import UserError
from dfmlbench.method import RunContext
from dfmlbench.methods import create_method
from dfmlbench.pool import MIXED_ARCHITECTURES, PoolSpec, obtain_pool


def test_mixed_architectures_are_seeded_per_teacher_and_prefix_stable():
    spec = PoolSpec(arch="mix", num_teachers=30)
    archs = [spec.arch_of(i) for i in range(30)]
    assert set(archs) == set(MIXED_ARCHITECTURES)
    assert archs[:5] == [PoolSpec(arch="mix", num_teachers=5).arch_of(i) for i in range(5)]
    assert [PoolSpec(arch="mix", seed=1).arch_of(i) for i in range(30)] != archs
    assert PoolSpec(arch="resnet10").arch_of(7) == "resnet10"


def test_unknown_pool_arch_suggests_mix():
    with pytest.raises(UserError, match="did you mean 'mix'"):
        PoolSpec.from_config({"arch": "mixx"})


@pytest.fixture(scope="module")
def mixed_pool(glyphs):
    """Three teachers of glyphs, one epoch each; seed 16 draws conv4, resnet10, resnet18."""
    return obtain_pool(glyphs, PoolSpec(arch="mix", num_teachers=3, epochs=1, seed=16))


def test_mixed_pool_holds_each_teachers_own_architecture(mixed_pool):
    assert mixed_pool.architectures == ["conv4", "resnet10", "resnet18"]
    assert [t.arch for t in mixed_pool] == ["conv4", "resnet10", "resnet18"]
    x = torch.rand(2, 3, 32, 32)
    assert all(t.model(x).shape == (2, 5) for t in mixed_pool)


TINY = {
    "free": {"epochs": 1, "warmup_epochs": 1, "teachers_per_epoch": 2, "images_per_class": 3, "nz": 16,
             "ngf": 8, "k": 2, "replay_query": 2, "replay_episode_batch": 1, "replay_max_metabatches": 1,
             "val_interval": 1},
    "purer": {"iterations": 2, "candidate_teachers": 3, "replay_query": 2, "replay_episode_batch": 1,
              "replay_inner_steps": 1, "val_interval": 2},
    "bidf-mkd": {"meta_iterations": 2, "episode_batch": 1, "generate_interval": 2, "support_per_class": 2,
                 "query_per_class": 2, "generator_iterations": 2, "nz": 16, "ngf": 8, "kd_inner_steps": 1,
                 "replay_inner_steps": 1, "replay_query": 2, "val_interval": 2},
}


@pytest.mark.parametrize("name", sorted(TINY))
def test_inversion_methods_take_a_mixed_pool(mixed_pool, tmp_path, name):
    method = create_method(name, TINY[name])
    ctx = RunContext(torch.device("cpu"), 0, method.settings, "conv4", 32, 3, 5, 1, tmp_path,
                     validator=lambda learner: 0.0)
    learner = method.fit(mixed_pool, ctx)
    assert torch.isfinite(learner.model(torch.rand(5, 3, 32, 32))).all()
    assert ctx.recovery_clock.seconds > 0


@pytest.mark.parametrize("name", ["average", "ota", "dro"])
def test_weight_fusion_refuses_a_mixed_pool_in_one_line(mixed_pool, tmp_path, name):
    method = create_method(name)
    ctx = RunContext(torch.device("cpu"), 0, method.settings, "conv4", 32, 3, 5, 1, tmp_path)
    with pytest.raises(UserError, match="needs teachers of one architecture, the pool mixes conv4, resnet10, resnet18"):
        method.fit(mixed_pool, ctx)
