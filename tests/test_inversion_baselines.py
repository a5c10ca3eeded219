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

PURER_TINY = {"iterations": 3, "candidate_teachers": 2, "replay_query": 3, "replay_episode_batch": 2,
              "replay_inner_steps": 2, "adv_start": 1, "adv_patience": 1, "val_interval": 2}
BIDF_TINY = {"meta_iterations": 4, "episode_batch": 2, "generate_interval": 2, "support_per_class": 3,
             "query_per_class": 3, "generator_iterations": 3, "nz": 16, "ngf": 8, "kd_inner_steps": 2,
             "replay_inner_steps": 2, "replay_query": 2, "adv_start": 0, "val_interval": 2}


def context(method, tmp_path, shot=1):
    return RunContext(torch.device("cpu"), 0, method.settings, "conv4", 32, 3, 5, shot, tmp_path,
                      validator=lambda learner: 0.0)


def purer(tiny_pool, tmp_path, **settings):
    method = create_method("purer", {**PURER_TINY, **settings})
    return PurerTraining(method.settings, tiny_pool, context(method, tmp_path))


def bidf(tiny_pool, tmp_path, **settings):
    method = create_method("bidf-mkd", {**BIDF_TINY, **settings})
    return BiDfTraining(method.settings, tiny_pool, context(method, tmp_path))


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
    rng = torch.Generator().manual_seed
    assert float(full.teacher_loss(teacher, rng(0)).detach()) > float(plain.teacher_loss(teacher, rng(0)).detach()) + 1e-3


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
        # every teacher's loss = 1 (still a function of the pixels)
        monkeypatch.setattr(training, "teacher_loss", lambda teacher, rng: 0.0 * training.data.images.sum() + 1.0)
        assert training.invert(adversarial=False) == expected


# -- BiDf-MKD ------------------------------------------------------------------------------------

def test_bidf_resets_the_generator_for_each_recovery(tiny_pool, tmp_path, monkeypatch):
    training = bidf(tiny_pool, tmp_path)
    import dfmlbench.methods.bidf_mkd as module
    original, snapshots = module.recover_lowest_loss, []

    def snapshot(generator):
        return torch.cat([p.detach().flatten().clone() for p in generator.parameters()])

    def spy(generator, *args):
        start = snapshot(generator)
        images = original(generator, *args)
        snapshots.append((start, snapshot(generator)))
        return images

    monkeypatch.setattr(module, "recover_lowest_loss", spy)
    template = snapshot(training.generator)
    gradients = training.generation_events([tiny_pool[0]], boundary=True)
    assert len(snapshots) == 2  # support and boundary query, each from a fresh generator
    (support_start, support_end), (query_start, _) = snapshots
    for start in (support_start, query_start):  # N(0, 0.02) weights: a re-initialised generator
        assert float(start.abs().max()) < 1.2 and not torch.equal(start, template)
    assert not torch.equal(support_end, query_start)  # the query did not continue the support's generator
    assert torch.equal(snapshot(training.generator), template)  # the template is never trained
    assert len(gradients) == len(list(training.model.parameters()))


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

    def adapt_spy(model, params, views, targets):
        adapted_seen["params"] = original_adapt(model, params, views, targets)
        return adapted_seen["params"]

    monkeypatch.setattr(training, "adapt_by_kd", adapt_spy)
    training.generation_events([tiny_pool[0]], boundary=True)
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
    training.generation_events([tiny_pool[0]], boundary=False)
    assert students == [None, None]


def test_bidf_outer_kd_loss_reaches_theta_through_the_inner_kd_steps(tiny_pool, tmp_path):
    training = bidf(tiny_pool, tmp_path)
    gradients = training.generation_events([tiny_pool[1]], boundary=True)
    assert all(float(g.abs().sum()) > 0 for g in gradients)
    # Both recovered sets are in the bank, under the teacher's absolute class ids.
    assert set(training.bank.ready_classes) == set(tiny_pool[1].class_ids)
    assert all(len(training.bank.images_of(c)) == 6 for c in tiny_pool[1].class_ids)


def test_bidf_periodic_events_then_replay(tiny_pool, tmp_path):
    training = bidf(tiny_pool, tmp_path, meta_iterations=4, generate_interval=2)
    learner = training.run()
    # Events at meta-iterations 1 and 3, two episode slots each.
    assert training.events == 4
    assert [step for step, _ in training.ctx.curves["replay_accuracy"]] == [2, 4]
    # two timed recoveries (support, query) per event meta-iteration: its events are one task axis
    assert learner.model is training.model and training.ctx.recovery_clock.intervals == 2 * 2


def test_bidf_plateau_rule_runs_one_event_beside_replay_as_mainkd(tiny_pool, tmp_path, monkeypatch):
    training = bidf(tiny_pool, tmp_path, meta_iterations=8, episode_batch=3, event_rule="plateau",
                    generate_interval=1)
    slots: list[int] = []
    original = training.meta_iteration
    monkeypatch.setattr(training, "meta_iteration", lambda it, events: slots.append(events) or original(it, events))
    training.run()
    # every slot is an event until the bank can form a 5-way task (tiny teachers know 5 classes
    # each, so one event fills it); then a stalled replay accuracy (patience 1, a fresh
    # running max after each trigger) triggers events in one slot of three, mainKD's rule
    assert slots[0] == 3 and set(slots[1:]) <= {0, 1} and 1 in slots[1:]
    assert training.events == 3 + slots[1:].count(1)


def test_bidf_validates_every_500_meta_iterations_the_official_2000_episodes():
    method = create_method("bidf-mkd", {})
    assert method.settings["val_interval"] * method.settings["episode_batch"] == 2000


def test_purer_run_is_reproducible_and_timed(tiny_pool, tmp_path):
    a = purer(tiny_pool, tmp_path / "a")
    b = purer(tiny_pool, tmp_path / "b")
    a.run(), b.run()
    torch.testing.assert_close(a.data.images, b.data.images)
    for p, q in zip(a.model.parameters(), b.model.parameters()):
        torch.testing.assert_close(p, q)
    assert a.ctx.recovery_clock.intervals == 3 and (tmp_path / "a" / "recovered_task.png").is_file()


