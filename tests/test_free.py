"""FREE's algorithm, checked step by step on tiny settings (a few seconds)."""

import numpy as np
import pytest
import torch

from dfmlbench.inversion.augment import GeneratedImageAugment
from dfmlbench.inversion.generator import Generator
from dfmlbench.inversion.recovery import RecoverySettings, interleaved_targets, recover_task
from dfmlbench.method import RunContext
from dfmlbench.methods import create_method
from dfmlbench.methods.free import FreeTraining

TINY = {"epochs": 2, "warmup_epochs": 1, "teachers_per_epoch": 3, "images_per_class": 4, "nz": 16,
        "ngf": 8, "k": 3, "replay_query": 3, "replay_episode_batch": 2, "replay_max_metabatches": 1,
        "val_interval": 1}


def param_snapshot(module):
    return torch.cat([p.detach().flatten().clone() for p in module.parameters()])


def recorded_recovery(teacher, recover_at, k=3):
    generator = Generator(nz=16, ngf=8)
    seen = []  # parameters at each generator forward
    generator.register_forward_pre_hook(lambda module, args: seen.append(param_snapshot(module)))
    labels = interleaved_targets(5, 4, torch.device("cpu"))
    task = recover_task(generator, teacher.model, labels, 16, None,
                        GeneratedImageAugment((0.5,) * 3, (0.25,) * 3),
                        RecoverySettings(steps=k, recover_at=recover_at), torch.Generator().manual_seed(0))
    return generator, seen, task


def test_inner_loop_makes_k_updates_and_recovers_at_the_adapted_generator(tiny_pool):
    generator, seen, task = recorded_recovery(tiny_pool[0], "k")
    assert task.updates == 3 and len(seen) == 4  # k forwards with updates, then one at the adapted params
    assert all(not torch.equal(seen[i], seen[i + 1]) for i in range(3))  # each step changed the generator
    final = param_snapshot(generator)
    assert torch.equal(seen[-1], final)  # images and meta-gradient come from the adapted generator
    assert task.images.shape == (20, 3, 32, 32) and task.meta_gradient is not None


def test_official_recovery_stops_one_update_short(tiny_pool):
    generator, seen, task = recorded_recovery(tiny_pool[0], "k-1")
    assert task.updates == 2 and len(seen) == 3
    assert not torch.equal(seen[-1], param_snapshot(generator))  # the k-th update is computed, then wasted


def test_meta_gradient_is_the_gradient_at_the_adapted_parameters(tiny_pool):
    generator, _, task = recorded_recovery(tiny_pool[0], "k")
    # The last forward ran at the final parameters and produced the gradient stored in the task.
    for name, param in generator.named_parameters():
        torch.testing.assert_close(task.meta_gradient[name], param.grad)


def make_training(tiny_pool, tmp_path, **settings):
    method = create_method(settings.pop("name", "free"), {**TINY, **settings})
    ctx = RunContext(torch.device("cpu"), 0, method.settings, "conv4", 32, 3, 5, 1, tmp_path,
                     validator=lambda learner: 0.0)
    return FreeTraining(method.settings, tiny_pool, ctx)


def kd_forward_weights(training, monkeypatch):
    """Run one learn_from_tasks and return the classifier weights at each student forward."""
    monkeypatch.setattr(FreeTraining, "gradient_inner_product", lambda self, views, targets: 0.0)
    teachers = [training.pool[i] for i in range(3)]
    tasks = training.recover(teachers, warmup=False)
    seen = []
    training.model.register_forward_pre_hook(lambda m, a: seen.append(m.classifier.weight.detach().clone()))
    before = training.model.classifier.weight.detach().clone()
    training.learn_from_tasks(teachers, tasks, epoch=1)
    return before, seen, training.model.classifier.weight.detach().clone()


def test_bell_takes_the_ith_gradient_after_i_minus_1_sequential_updates(tiny_pool, tmp_path, monkeypatch):
    before, seen, after = kd_forward_weights(make_training(tiny_pool, tmp_path), monkeypatch)
    assert len(seen) == 3
    assert torch.equal(seen[0], before)
    assert not torch.equal(seen[1], seen[0]) and not torch.equal(seen[2], seen[1])
    assert not torch.equal(after, before)  # the Reptile-style outer step moved theta


def test_bell_interpolate_is_the_papers_literal_outer_step(tiny_pool, tmp_path, monkeypatch):
    """theta <- theta + eps (theta~ - theta): eps = 1 lands on theta~, eps = 0.25 a quarter of the way."""
    runs = {eps: make_training(tiny_pool, tmp_path / str(eps), bell_outer="interpolate", bell_epsilon=eps)
            for eps in (1.0, 0.25)}
    (before, _, adapted), (before_again, _, after) = (kd_forward_weights(runs[eps], monkeypatch) for eps in runs)
    torch.testing.assert_close(before_again, before)
    assert not torch.equal(adapted, before)
    torch.testing.assert_close(after, before + 0.25 * (adapted - before))
    assert not runs[0.25].optimizer.state  # no optimiser step: the shared Adam is left alone


def test_erm_takes_every_gradient_at_theta(tiny_pool, tmp_path, monkeypatch):
    before, seen, after = kd_forward_weights(make_training(tiny_pool, tmp_path, name="free-erm"), monkeypatch)
    assert len(seen) == 3 and all(torch.equal(w, before) for w in seen)
    assert not torch.equal(after, before)


def test_student_given_to_five_is_the_base_meta_learner(tiny_pool, tmp_path, monkeypatch):
    from dfmlbench.methods import free as free_module
    x = torch.randn(10, 3, 32, 32)
    training = make_training(tiny_pool, tmp_path)
    captured = []
    original = free_module.recover_tasks
    monkeypatch.setattr(free_module, "recover_tasks",
                        lambda *args, **kw: captured.append(args[3]) or original(*args, **kw))
    training.recover([tiny_pool[0], tiny_pool[1]], warmup=False)
    student = captured[0]
    assert student is not training.model and not any(p.requires_grad for p in student.parameters())
    torch.testing.assert_close(student(x), training.model(x))  # theta before this epoch's updates
    training.recover([tiny_pool[0]], warmup=True)
    assert captured[1] is None  # warmup: CE only


def test_sequential_generator_carries_over_from_teacher_to_teacher(tiny_pool, tmp_path):
    training = make_training(tiny_pool, tmp_path, name="free-sequence")
    before = param_snapshot(training.generator)
    tasks = training.recover([tiny_pool[0], tiny_pool[1]], warmup=False)
    assert not torch.equal(param_snapshot(training.generator), before)  # adapted in place, no meta-update
    assert all(task.meta_gradient is None for task in tasks)


def test_bank_receives_every_task_or_only_the_last(tiny_pool, tmp_path):
    for bank_add, expected_tasks in (("all", 3), ("last", 1)):
        training = make_training(tiny_pool, tmp_path, bank_add=bank_add)
        teachers = [training.pool[i] for i in range(3)]
        training.store(teachers, training.recover(teachers, warmup=False))
        assert len(training.bank) == expected_tasks * 20
        assert set(training.bank.ready_classes) <= {c for t in teachers for c in t.class_ids}


def test_official_fidelity_preset_switches_every_deviation():
    settings = create_method("free-official").settings
    assert settings["bank_add"] == "last" and settings["recover_at"] == "k-1"
    assert settings["adv_quirk"] and settings["kd_quirk"]
    harness = create_method("free").settings
    assert harness["bank_add"] == "all" and harness["recover_at"] == "k" and not harness["kd_quirk"]
    mixed = create_method("free-official", {"kd_quirk": False}).settings  # one switch back to the paper
    assert not mixed["kd_quirk"] and mixed["adv_quirk"]


def test_free_official_cells_use_last_epoch_teachers_as_the_official_code():
    from dfmlbench.config import load_suite, resolve
    from dfmlbench.planning import expand_cells
    suite = load_suite("quickstart")
    cells = {c.method.name: c for c in expand_cells(resolve(suite, "smoke", []), ["free", "free-official", "average"])}
    assert cells["free-official"].config["pool"]["select"] == "final"  # P3
    assert cells["free"].config["pool"]["select"] == cells["average"].config["pool"]["select"] == "best"
    (back,) = expand_cells(resolve(suite, "smoke", [("method_settings.free-official.teacher_select", None)]),
                           ["free-official"])
    assert back.config["pool"] == cells["free"].config["pool"]


def test_a_full_tiny_run_records_time_curves_and_the_recovered_grid(tiny_pool, tmp_path):
    training = make_training(tiny_pool, tmp_path)
    learner = training.run()
    ctx = training.ctx
    # post-warmup epochs only: one timed block per epoch (its b recoveries are one task axis)
    assert ctx.recovery_clock.seconds > 0 and ctx.recovery_clock.intervals == 2
    assert [step for step, _ in ctx.curves["grad_inner_product"]] == [2, 3]
    assert (tmp_path / "recovered_task.png").is_file()
    assert "last_epoch" in ctx.extra_learners and learner.model is training.model
    assert np.isfinite(ctx.info["best_val_accuracy"])


@pytest.mark.parametrize("bad", [{"learner": "bel"}, {"generator": "metaa"}])
def test_bad_switch_values_are_user_errors(bad):
    from dfmlbench.errors import UserError
    with pytest.raises(UserError, match="must be one of"):
        create_method("free", bad)


def test_a_killed_run_resumes_from_its_checkpoint_and_ends_identically(tiny_pool, tmp_path, monkeypatch):
    settings = {"epochs": 3, "checkpoint_interval": 1}

    def fit(folder):
        ctx = make_training(tiny_pool, folder, **settings).ctx  # one context, as Free.fit has
        training, first = ctx.checkpoints.resume(lambda: FreeTraining(ctx.settings, tiny_pool, ctx), "epoch")
        return training, training.run(first)

    _, uninterrupted = fit(tmp_path / "a")
    expected = uninterrupted.model.state_dict()

    import dfmlbench.methods.free as free_module
    original, calls = free_module.replay, []

    def dies_in_epoch_three(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # post-warmup epochs 2 and 3 replayed; epoch 4's replay is "killed"
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(free_module, "replay", dies_in_epoch_three)
    with pytest.raises(KeyboardInterrupt):
        fit(tmp_path / "b")
    assert (tmp_path / "b" / "checkpoint.pt").is_file()
    monkeypatch.setattr(free_module, "replay", original)
    resumed, learner = fit(tmp_path / "b")
    final = learner.model.state_dict()
    assert resumed.ctx.info["resumed_from_epoch"] == 3
    for name, value in expected.items():
        torch.testing.assert_close(final[name], value)
    assert not (tmp_path / "b" / "checkpoint.pt").exists()  # removed once the cell is done
