import pytest
import torch

from dfmlbench.errors import UserError
from dfmlbench.models import build_model, copy_parameters


def n_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("size, count", [(32, 29_541), (84, 32_901)])
def test_conv4_parameter_count_matches_the_official_network(size, count):
    assert n_params(build_model("conv4", image_size=size)) == count


@pytest.mark.parametrize("arch", ["resnet10", "resnet18"])
def test_resnets_give_five_logits_and_differ_in_depth(arch):
    model = build_model(arch)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 5)
    blocks = len(model.blocks)
    assert blocks == (4 if arch == "resnet10" else 8)


def test_resnet_stem_has_no_relu_or_pool():
    stem = build_model("resnet10").stem
    assert [type(m).__name__ for m in stem] == ["Conv2d", "BatchNorm2d"]


def test_official_init_and_zero_head_bias():
    model = build_model("conv4", zero_head_bias=True, generator=torch.Generator().manual_seed(1))
    conv = model.features[0][0]
    assert abs(conv.weight.std().item() - (2 / (9 * 32)) ** 0.5) < 0.03
    assert torch.all(model.features[0][1].weight == 1)
    assert torch.all(model.classifier.bias == 0)


def test_seeded_build_is_reproducible_and_leaves_global_rng_alone():
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    a = build_model("conv4", generator=torch.Generator().manual_seed(3))
    after = torch.rand(1)
    b = build_model("conv4", generator=torch.Generator().manual_seed(3))
    assert torch.equal(before, after)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))


def test_meta_learner_bn_uses_batch_statistics_even_in_eval_mode():
    model = build_model("conv4", batch_stat_bn=True).eval()
    assert not any("running" in name for name, _ in model.named_buffers())
    x = torch.randn(8, 3, 32, 32)
    # With batch statistics an image's output depends on the rest of the batch.
    assert not torch.allclose(model(x)[:4], model(x[:4]))


def test_copy_parameters_loads_teacher_weights_without_running_stats():
    teacher = build_model("conv4", generator=torch.Generator().manual_seed(5))
    learner = build_model("conv4", batch_stat_bn=True)
    copy_parameters(learner, teacher.state_dict())
    assert torch.equal(learner.classifier.weight, teacher.classifier.weight)
    with pytest.raises(UserError, match="does not fit|missing"):
        copy_parameters(build_model("resnet10", batch_stat_bn=True), teacher.state_dict())


def test_unknown_architecture_suggests_the_closest():
    with pytest.raises(UserError, match="did you mean 'conv4'"):
        build_model("conv5")


def test_conv4_pools_before_its_relu_and_computes_the_official_block():
    """conv-BN-max-pool-ReLU is conv-BN-ReLU-max-pool (ReLU and max commute): the same outputs,
    the same gradients up to summation order, at a quarter of the ReLU's work."""
    import copy

    from torch import nn
    model = build_model("conv4", 5, 84, 3, batch_stat_bn=True, generator=torch.Generator().manual_seed(0))
    official = copy.deepcopy(model)
    for block in official.features:
        assert isinstance(block[2], nn.MaxPool2d) and isinstance(block[3], nn.ReLU)
        block[2], block[3] = block[3], block[2]
    x = torch.randn(6, 3, 84, 84, generator=torch.Generator().manual_seed(1))  # 84 px: odd sides floor
    ours, theirs = model(x), official(x)
    assert torch.equal(ours, theirs)
    ours.square().sum().backward()
    theirs.square().sum().backward()
    for a, b in zip(model.parameters(), official.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6)
