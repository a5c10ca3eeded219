import numpy as np
import pytest
import torch

from dfmlbench.inversion.augment import GeneratedImageAugment
from dfmlbench.inversion.bank import MemoryBank, quantize
from dfmlbench.inversion.generator import Generator, reset_generator
from dfmlbench.inversion.losses import agreement_masked_kl, kd_loss


@pytest.mark.parametrize("size, params", [(32, 2_330_000), (84, 14_730_000)])
def test_generator_shape_range_and_size(size, params):
    generator = Generator(image_size=size)
    images = generator(torch.randn(4, 256))
    assert images.shape == (4, 3, size, size)
    assert images.min() >= 0 and images.max() <= 1
    count = sum(p.numel() for p in generator.parameters())
    assert abs(count - params) / params < 0.01  # free.md §3.1: 2.33 M at 32 px, 14.73 M at 84 px


def test_reset_generator_follows_bidf_init():
    generator = Generator()
    reset_generator(generator, torch.Generator().manual_seed(0))
    assert abs(generator.project.weight.std().item() - 0.02) < 0.002
    assert torch.all(generator.project.bias == 0)
    bn = generator.body[0]
    assert abs(bn.weight.mean().item() - 1) < 0.01 and torch.all(bn.bias == 0)


def test_kd_loss_is_a_true_kl():
    logits = torch.randn(10, 5)
    assert kd_loss(logits, logits).abs() < 1e-6
    assert kd_loss(torch.randn(10, 5), logits) > 0
    p, q = torch.softmax(logits, -1), torch.softmax(logits * 0.3, -1)
    expected = (p * (p.log() - q.log())).sum(-1).mean()
    torch.testing.assert_close(kd_loss(logits * 0.3, logits), expected)


def test_kd_quirk_reproduces_the_official_formula():
    s, t = torch.randn(10, 5), torch.randn(10, 5)
    p_s, p_t = torch.softmax(s, -1), torch.softmax(t, -1)
    torch.testing.assert_close(kd_loss(s, t, quirk=True), (p_t * (p_t.log() - p_s)).mean())


def test_agreement_mask_ignores_disagreeing_samples():
    teacher = torch.tensor([[3.0, 0, 0], [0, 3.0, 0]])
    student = torch.tensor([[2.0, 1, 0], [3.0, 0, 0]])  # agrees on sample 0 only
    p_t, p_s = torch.softmax(teacher[0], -1), torch.softmax(student[0], -1)
    expected = (p_t * (p_t.log() - p_s.log())).sum() / 2
    torch.testing.assert_close(agreement_masked_kl(student, teacher), expected)
    assert agreement_masked_kl(teacher, teacher).abs() < 1e-6


def test_official_adversarial_form_is_finite_when_a_student_probability_underflows():
    teacher = torch.tensor([[5.0, 0.0, 0.0]])
    student = torch.tensor([[200.0, 0.0, -200.0]])  # softmax underflows to exactly 0 in class 2
    assert float(torch.softmax(student, -1)[0, 2]) == 0.0
    value = agreement_masked_kl(student, teacher, quirk=True)
    p_t = torch.softmax(teacher[0], -1)
    # p_s = (1, 0, 0) in float32: sum_c p_s (log p_s - p_t) = 1 * (0 - p_t,0), with 0 log 0 = 0 as F.kl_div
    assert torch.isfinite(value) and torch.isclose(value, -p_t[0])


def test_batch_augmentation_uses_one_crop_and_flip_for_all():
    augment = GeneratedImageAugment((0.0,) * 3, (1.0,) * 3, granularity="batch")
    x = torch.rand(1, 3, 32, 32).expand(6, -1, -1, -1)
    out = augment(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and all(torch.equal(out[0], o) for o in out)
    per_sample = GeneratedImageAugment((0.0,) * 3, (1.0,) * 3, granularity="sample")
    out = per_sample(torch.rand(1, 3, 32, 32).expand(16, -1, -1, -1), torch.Generator().manual_seed(0))
    assert not all(torch.equal(out[0], o) for o in out)


def test_augmentation_is_differentiable_and_normalises():
    augment = GeneratedImageAugment((0.5,) * 3, (0.25,) * 3, padding=0)
    x = torch.full((2, 3, 8, 8), 0.75, requires_grad=True)
    out = augment(x)
    torch.testing.assert_close(out, torch.ones_like(out))
    out.sum().backward()
    assert x.grad is not None and torch.all(x.grad == 4)


def test_bank_quantises_like_the_png_round_trip():
    x = torch.tensor([0.0, 0.999, 1.2, -0.1, 0.5])
    assert quantize(x).tolist() == [0, 254, 255, 0, 127]


def test_bank_is_a_fifo_ring_per_class():
    bank = MemoryBank(slots_per_class=3)
    for value in range(5):  # five recoveries of class 7, two images each
        bank.add(7, torch.full((2, 3, 4, 4), value / 10))
    stored = sorted({int(v) for v in bank.images_of(7).flatten()})
    assert stored == [int(v / 10 * 255) for v in (2, 3, 4)]  # the two oldest were overwritten
    assert len(bank) == 6 and bank.ready_classes == [7]


def test_bank_tasks_mix_classes_and_are_class_major():
    bank = MemoryBank()
    for c in range(6):
        bank.add(c, torch.full((20, 3, 4, 4), c / 10))
    task = bank.sample_task(5, 2, 3, np.random.default_rng(0))
    assert len(set(task.classes)) == 5 and set(task.classes) <= set(range(6))
    assert task.support_labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    for image, label in zip(task.query, task.query_labels):
        assert int(image.mean() * 255 + 0.5) == int(task.classes[label] / 10 * 255)
    with pytest.raises(ValueError, match="holds 6 classes"):
        bank.sample_task(7, 1, 1, np.random.default_rng(0))
    bank.add(9, torch.zeros(3, 3, 4, 4))  # too few images for a 2+3 share: never drawn
    assert 9 not in bank.classes_with(5) and 9 in bank.ready_classes
    for seed in range(20):
        assert 9 not in bank.sample_task(5, 2, 3, np.random.default_rng(seed)).classes


def test_bn_statistics_term_is_zero_at_the_running_statistics_and_hooks_are_removed():
    from dfmlbench.inversion.losses import BatchNormStatistics
    from dfmlbench.models import build_model
    teacher = build_model("conv4").eval()
    x = torch.randn(16, 3, 32, 32)
    with BatchNormStatistics(teacher) as bn:
        teacher(x)
    assert bn.total() > 0 and len(bn.terms) == 4
    # Make the first layer's running statistics equal to this batch's: its term vanishes.
    first = teacher.features[0]
    with torch.no_grad():
        inputs = first[0](x)
        first[1].running_mean.copy_(inputs.mean((0, 2, 3)))
        first[1].running_var.copy_(inputs.var((0, 2, 3), unbiased=False))
    with BatchNormStatistics(teacher) as again:
        teacher(x)
    assert again.terms[0] < 1e-4
    assert all(not m._forward_hooks for m in teacher.modules())
    x.requires_grad_()
    with BatchNormStatistics(teacher) as bn:
        teacher(x)
    bn.total().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("bias, size", [(False, 8), (True, 7)])
def test_upsampled_conv_is_a_nearest_upsampling_then_the_convolution(bias, size):
    """The generator's fused x2-upsampling convolution computes nn.Upsample then nn.Conv2d with
    the same weights (float64: equal to rounding), forward and backward, in either layout."""
    from torch import nn

    from dfmlbench.inversion.generator import UpsampledConv2d
    torch.manual_seed(0)
    fused = UpsampledConv2d(6, 5, bias=bias).double()
    if bias:
        nn.init.normal_(fused.bias)
    plain = nn.Conv2d(6, 5, 3, padding=1, bias=bias).double()
    plain.load_state_dict(fused.state_dict())
    for layout in (torch.contiguous_format, torch.channels_last):
        x = torch.randn(3, 6, size, size, dtype=torch.float64).contiguous(memory_format=layout)
        x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
        ours, theirs = fused(x1), plain(nn.functional.interpolate(x2, scale_factor=2, mode="nearest"))
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
        fused.zero_grad(), plain.zero_grad()
        ours.pow(3).sum().backward()
        theirs.pow(3).sum().backward()
        torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-10, atol=1e-10)
        for a, b in zip(fused.parameters(), plain.parameters()):
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-10, atol=1e-10)
