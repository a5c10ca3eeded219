"""PURER and BiDf-MKD, checked on their algorithmic claims with tiny settings (seconds)."""

import math

import torch

from dfmlbench.adaptation import forward
from dfmlbench.inversion.augment import random_roll
from dfmlbench.inversion.losses import total_variation
from dfmlbench.maml import PlateauTrigger
from dfmlbench.method import RunContext
from dfmlbench.methods import create_method
from dfmlbench.methods.bidf_mkd import BiDfTraining
from dfmlbench.methods.purer import PurerTraining

PURER_TINY = {"iterations": 3, "candidate_teachers": 2, "query": 3, "episode_batch": 2, "inner_steps": 2,
              "adv_start": 1, "adv_patience": 1, "val_interval": 2}
BIDF_TINY = {"meta_iterations": 4, "episode_batch": 2, "generate_interval": 2, "support_per_class": 3,
             "query_per_class": 3, "generator_iterations": 3, "nz": 16, "ngf": 8, "kd_inner_steps": 2,
             "inner_steps": 2, "replay_query": 2, "adv_start": 0, "val_interval": 2}


def context(method, tmp_path, shot=1):
    return RunContext(torch.device("cpu"), 0, method.settings, "conv4", 32, 3, 5, shot, tmp_path,
                      validator=lambda learner: 0.0)


def purer(tiny_pool, tmp_path, batched=True, **settings):
    method = create_method("purer", {**PURER_TINY, **settings})
    return PurerTraining(method.settings, tiny_pool, context(method, tmp_path), batched)


def bidf(tiny_pool, tmp_path, batched=True, **settings):
    method = create_method("bidf-mkd", {**BIDF_TINY, **settings})
    return BiDfTraining(method.settings, tiny_pool, context(method, tmp_path), batched)


# -- shared pieces -------------------------------------------------------------------------------

def test_total_variation_is_zero_on_flat_images_and_counts_four_directions():
    assert float(total_variation(torch.full((2, 3, 8, 8), 0.7))) == 0.0
    image = torch.zeros(1, 1, 2, 2)
    image[..., 0, 0] = 1.0  # differs from each of its 3 neighbours once, in 4 directions in all
    assert math.isclose(float(total_variation(image)), 3.0)  # h, v, diagonal: 1 each; anti-diagonal: 0


def test_random_roll_is_one_cyclic_shift_for_the_whole_batch():
    images = torch.rand(4, 3, 8, 8)
    rolled = random_roll(images, 2, torch.Generator().manual_seed(3))
    shifts = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
              if torch.equal(torch.roll(images, (dy, dx), (-2, -1)), rolled)]
    assert len(shifts) == 1


def test_plateau_trigger_fires_after_patience_stale_values_then_resets():
    trigger = PlateauTrigger(2)
    assert [trigger.stalled(v) for v in (1.0, 2.0, 1.5, 1.9, 0.1, 0.05, 0.0)] == \
        [False, False, False, True, False, False, True]


# -- PURER ---------------------------------------------------------------------------------------

def test_purer_optimises_pixels_of_the_pools_classes_only(tiny_pool, tmp_path):
    training = purer(tiny_pool, tmp_path)
    covered = sorted({c for t in tiny_pool for c in t.class_ids})
    assert training.data.class_ids == covered
    assert training.data.images.shape == (len(covered), 1 + 3, 3, 32, 32)
    before_pixels = training.data.images.detach().clone()
    before_model = [p.detach().clone() for p in training.model.parameters()]
    training.invert(adversarial=False)
    assert not torch.equal(before_pixels, training.data.images)  # the pixels are the variables
    assert all(torch.equal(a, b) for a, b in zip(before_model, training.model.parameters()))


def test_purer_teacher_loss_includes_the_deepinversion_priors(tiny_pool, tmp_path):
    plain = purer(tiny_pool, tmp_path, tv_weight=0.0, bn_weight=0.0, l2_weight=0.0, jitter=0)
    full = purer(tiny_pool, tmp_path, jitter=0)
    teacher = tiny_pool[0]
    assert float(full.teacher_loss(teacher).detach()) > float(plain.teacher_loss(teacher).detach()) + 1e-3


def test_purer_adversarial_step_raises_the_meta_learners_loss(tiny_pool, tmp_path):
    training = purer(tiny_pool, tmp_path, pixel_lr=0.05)
    # The pixel step that only ascends L_outer, isolated from the inversion terms (weights 0).
    training.s.update(candidate_teachers=1)
    rng_state = training.rng.bit_generator.state

    def outer_loss():
        training.rng.bit_generator.state = rng_state  # the same adversarial task each time
        with torch.no_grad():
            return float(training.adversarial_loss())

    before = outer_loss()
    training.rng.bit_generator.state = rng_state
    training.pixel_optimizer.zero_grad()
    (-training.s["adv_weight"] * training.adversarial_loss()).backward()
    grad = training.data.images.grad
    assert grad is not None and float(grad.abs().sum()) > 0  # second order reaches the pixels
    training.pixel_optimizer.step()
    assert outer_loss() > before


def test_purer_adversarial_loss_leaves_the_meta_learner_untouched(tiny_pool, tmp_path):
    training = purer(tiny_pool, tmp_path)
    training.adversarial_loss().backward()
    assert all(p.grad is None for p in training.model.parameters())


def test_purer_curriculum_starts_after_adv_start(tiny_pool, tmp_path):
    never = purer(tiny_pool, tmp_path, adv_start=100)
    never.run()
    assert never.adversarial_tasks == 0
    early = purer(tiny_pool, tmp_path, iterations=6, adv_start=0, adv_patience=1)
    early.run()
    assert early.adversarial_tasks >= 1


def test_purer_official_loss_weights_teachers_by_cumulative_sum(tiny_pool, tmp_path, monkeypatch):
    for quirk, expected in ((False, 3.0), (True, 3.0 + 2.0 + 1.0)):
        training = purer(tiny_pool, tmp_path, candidate_teachers=3, loss_quirk=quirk)
        unit = torch.ones((), requires_grad=True)
        # every teacher's loss = 1
        monkeypatch.setattr(training, "teacher_losses", lambda teachers: [unit * 1.0 for _ in teachers])
        assert training.invert(adversarial=False) == expected


def test_purer_stacked_teacher_losses_equal_the_teacher_loop(tiny_pool, tmp_path):
    """The chosen teachers' DeepInversion losses as one stacked Conv4 (BN-statistics term from
    the stacked activations, jitter drawn in the same order) equal the per-teacher loop, and
    so do their gradients on the pixels."""
    training = purer(tiny_pool, tmp_path)
    teachers = [tiny_pool[i] for i in range(3)]
    state = training.torch_rng.get_state()
    stacked_losses = training.teacher_losses(teachers)
    assert isinstance(stacked_losses, torch.Tensor) and stacked_losses.shape == (3,)
    stacked_grad = torch.autograd.grad(stacked_losses.sum(), training.data.images)[0]
    training.torch_rng.set_state(state)
    loop = torch.stack([training.teacher_loss(t) for t in teachers])
    loop_grad = torch.autograd.grad(loop.sum(), training.data.images)[0]
    torch.testing.assert_close(stacked_losses, loop, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(stacked_grad, loop_grad, rtol=1e-4, atol=1e-6)
    assert purer(tiny_pool, tmp_path, batched=False).teacher_losses(teachers).__class__ is list


# -- BiDf-MKD ------------------------------------------------------------------------------------

def test_bidf_resets_the_generator_for_each_recovery(tiny_pool, tmp_path, monkeypatch):
    training = bidf(tiny_pool, tmp_path)
    starts = []
    original = training.generator.forward

    def spy(z):
        starts.append(torch.cat([p.detach().flatten().clone() for p in training.generator.parameters()]))
        return original(z)

    monkeypatch.setattr(training.generator, "forward", spy)
    loss = training.generation_event(tiny_pool[0], boundary=True)
    steps = training.s["generator_iterations"]
    assert len(starts) == 2 * steps  # support and boundary query, each from a fresh generator
    first, second = starts[0], starts[steps]
    for start in (first, second):  # N(0, 0.02) weights: a re-initialised generator
        assert float(start.abs().max()) < 1.2
    assert not torch.equal(starts[steps - 1], second)  # the query did not continue the support's generator
    assert loss.requires_grad


def test_bidf_boundary_query_uses_the_adapted_student_with_the_agreement_mask(tiny_pool, tmp_path, monkeypatch):
    training = bidf(tiny_pool, tmp_path)
    seen = {}
    import dfmlbench.methods.bidf_mkd as module
    original = module.recover_lowest_loss

    def spy(generator, teacher, labels, nz, student, augment, settings, rng):
        seen.setdefault("students", []).append(student)
        seen.setdefault("adv", []).append(settings.adv_weight)
        return original(generator, teacher, labels, nz, student, augment, settings, rng)

    monkeypatch.setattr(module, "recover_lowest_loss", spy)
    adapted_seen = {}
    original_adapt = training.adapt_by_kd

    def adapt_spy(views, targets):
        adapted_seen["params"] = original_adapt(views, targets)
        return adapted_seen["params"]

    monkeypatch.setattr(training, "adapt_by_kd", adapt_spy)
    training.generation_event(tiny_pool[0], boundary=True)
    support_student, query_student = seen["students"]
    assert support_student is None and seen["adv"] == [0.0, 1.0]
    x = torch.rand(6, 3, 32, 32)
    adapted = {k: v.detach() for k, v in adapted_seen["params"].items()}
    base = {k: v.detach() for k, v in training.model.named_parameters()}
    torch.testing.assert_close(query_student(x), forward(training.model, adapted, x))
    assert not torch.allclose(query_student(x), forward(training.model, base, x))  # not theta itself


def test_bidf_query_before_adv_start_is_ce_only(tiny_pool, tmp_path, monkeypatch):
    training = bidf(tiny_pool, tmp_path)
    import dfmlbench.methods.bidf_mkd as module
    original = module.recover_lowest_loss
    students = []
    monkeypatch.setattr(module, "recover_lowest_loss",
                        lambda g, t, l, nz, student, *rest: students.append(student) or original(g, t, l, nz, student, *rest))
    training.generation_event(tiny_pool[0], boundary=False)
    assert students == [None, None]


def test_bidf_outer_kd_loss_reaches_theta_through_the_inner_kd_steps(tiny_pool, tmp_path):
    training = bidf(tiny_pool, tmp_path)
    loss = training.generation_event(tiny_pool[1], boundary=True)
    loss.backward()
    assert all(p.grad is not None for p in training.model.parameters())
    # Both recovered sets are in the bank, under the teacher's absolute class ids.
    assert set(training.bank.ready_classes) == set(tiny_pool[1].class_ids)
    assert all(len(training.bank.images_of(c)) == 6 for c in tiny_pool[1].class_ids)


def test_bidf_periodic_events_then_replay(tiny_pool, tmp_path):
    training = bidf(tiny_pool, tmp_path, meta_iterations=4, generate_interval=2)
    learner = training.run()
    # Events at meta-iterations 1 and 3, two episode slots each.
    assert training.events == 4
    assert [step for step, _ in training.ctx.curves["replay_accuracy"]] == [2, 4]
    # two timed recoveries (support, query) per event meta-iteration: its events run stacked
    assert learner.model is training.model and training.ctx.recovery_clock.intervals == 2 * 2


def test_purer_run_is_reproducible_and_timed(tiny_pool, tmp_path):
    a = purer(tiny_pool, tmp_path / "a")
    b = purer(tiny_pool, tmp_path / "b")
    a.run(), b.run()
    torch.testing.assert_close(a.data.images, b.data.images)
    for p, q in zip(a.model.parameters(), b.model.parameters()):
        torch.testing.assert_close(p, q)
    assert a.ctx.recovery_clock.intervals == 3 and (tmp_path / "a" / "recovered_task.png").is_file()


def test_bidf_stacked_events_equal_the_event_loop(tiny_pool, tmp_path):
    """An event meta-iteration's generation events batched (stacked generators, teachers and
    adapted students) give the loop's outer loss, meta-gradient, bank and recovered images.
    float64 and an augmentation that draws nothing, so both paths draw the same resets and codes
    (in float32, Adam's sign-like first steps amplify rounding in near-zero gradients)."""
    import copy
    from dataclasses import replace as replace_field
    from dfmlbench.inversion.augment import GeneratedImageAugment

    class NormalizeOnly(GeneratedImageAugment):
        def __call__(self, images, rng=None):
            return self.normalize(images)

    teachers = [replace_field(tiny_pool[i], model=copy.deepcopy(tiny_pool[i].model).double()) for i in (0, 1, 2)]
    results = []
    for batched in (True, False):
        training = bidf(tiny_pool, tmp_path / str(batched), batched)
        training.model.double()
        training.generator.double()
        training.augment = NormalizeOnly(tiny_pool.mean, tiny_pool.std)
        if batched:
            assert training.can_stack(teachers)
            loss = training.generation_events_stacked(teachers, boundary=True)
        else:
            loss = sum(training.generation_event(t, boundary=True) for t in teachers)
        grads = torch.autograd.grad(loss, list(training.model.parameters()))
        bank = {c: training.bank.images_of(c) for c in training.bank.ready_classes}
        results.append((loss.detach(), grads, bank, training.last_support, training.events))
    (loss_a, grads_a, bank_a, last_a, events_a), (loss_b, grads_b, bank_b, last_b, events_b) = results
    torch.testing.assert_close(loss_a, loss_b, rtol=1e-9, atol=1e-12)
    for a, b in zip(grads_a, grads_b):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-10)
    assert events_a == events_b == 3 and list(bank_a) == list(bank_b)
    for c in bank_a:
        # uint8 truncation of float64 images that agree to ~1e-15: a pixel may land one level
        # apart only where it sits on a level boundary, so not bitwise on every CPU
        levels = bank_a[c].int() - bank_b[c].int()
        assert bank_a[c].shape == bank_b[c].shape and int(levels.abs().max()) <= 1
        assert float((levels != 0).double().mean()) < 1e-3
    torch.testing.assert_close(last_a, last_b, rtol=1e-9, atol=1e-12)
