"""optim.Schedule: per-step and per-epoch learning-rate decisions, and what a resume changes."""

import math

import pytest
import torch

from alexnet.config import TrainConfig
from alexnet.core.optim import LrSchedule, Schedule, make_optimizer
from alexnet.run.errors import UserError

STEPS_PER_EPOCH = 10


def _schedule(**train) -> Schedule:
    cfg = TrainConfig(**{"schedule": "onecycle", "epochs": 2, "lr": 0.1, "warmup_epochs": 0.5, **train})
    model = torch.nn.Linear(3, 2)
    return Schedule(make_optimizer(model, cfg), cfg, STEPS_PER_EPOCH)


def _run_steps(schedule: Schedule, n: int) -> None:
    for _ in range(n):
        schedule.optimizer.step()
        schedule.after_step()


def test_onecycle_ends_at_zero_and_warms_up():
    s = _schedule()
    assert s.lr == pytest.approx(0.1 / 5)  # step 0 of a 5-step warm-up
    _run_steps(s, 2 * STEPS_PER_EPOCH)
    assert s.lr == pytest.approx(0.0, abs=1e-12)


def test_resume_with_more_epochs_continues_the_new_cosine():
    """A finished 2-epoch onecycle run resumed with --epochs 4 trains on at the lr of a 4-epoch
    cosine at that step, not at the old schedule's 0 (the LambdaLR state carries the length)."""
    old = _schedule(epochs=2)
    _run_steps(old, 2 * STEPS_PER_EPOCH)
    state = old.state_dict()
    new = _schedule(epochs=4)
    lines = []
    new.resume(state, old.cfg, lines.append)
    expected = 0.1 * LrSchedule("onecycle", 4, STEPS_PER_EPOCH, 30, 0.5)(2 * STEPS_PER_EPOCH)
    assert expected > 0.01
    assert new.lr == pytest.approx(expected)
    assert any("rebuilt for 4 epochs" in line for line in lines)
    _run_steps(new, 2 * STEPS_PER_EPOCH)
    assert new.lr == pytest.approx(0.0, abs=1e-12)


def test_resume_unchanged_is_the_uninterrupted_schedule():
    whole = _schedule(epochs=3)
    _run_steps(whole, 3 * STEPS_PER_EPOCH)
    first = _schedule(epochs=3)
    _run_steps(first, 13)
    second = _schedule(epochs=3)
    lines = []
    second.resume(first.state_dict(), first.cfg, lines.append)
    assert lines == []  # nothing changed, nothing to say
    lrs = []
    for _ in range(3 * STEPS_PER_EPOCH - 13):
        lrs.append(second.lr)
        second.optimizer.step()
        second.after_step()
    reference = _schedule(epochs=3)
    _run_steps(reference, 13)
    expected = []
    for _ in range(3 * STEPS_PER_EPOCH - 13):
        expected.append(reference.lr)
        reference.optimizer.step()
        reference.after_step()
    assert lrs == pytest.approx(expected)


def test_resume_with_another_lr_scales_the_schedule():
    old = _schedule(epochs=2)
    _run_steps(old, 7)
    new = _schedule(epochs=2, lr=0.05)
    new.resume(old.state_dict(), old.cfg, lambda line: None)
    assert new.lr == pytest.approx(old.lr / 2)


def test_resume_with_another_schedule_kind_is_refused():
    old = _schedule(epochs=2)
    new = _schedule(schedule="step")
    with pytest.raises(UserError, match="schedule"):
        new.resume(old.state_dict(), old.cfg, lambda line: None)


def test_plateau_drops_apply_the_papers_momentum_rule_and_finish():
    """§5: lr / 10 when the error stops improving; the momentum buffer is rescaled by old/new
    (velocity in weight units); finished after lr_drops drops and one more plateau."""
    s = _schedule(schedule="plateau", plateau_patience=0, lr_drops=1, lr=0.01)
    model_param = next(iter(s.optimizer.param_groups[0]["params"]))
    model_param.grad = torch.ones_like(model_param)
    s.optimizer.step()  # creates the momentum buffers
    buffer = s.optimizer.state[model_param]["momentum_buffer"].clone()
    s.start_epoch()
    assert s.end_epoch(0.5) is None  # the first error sets the best
    s.start_epoch()
    message = s.end_epoch(0.5)  # no improvement, patience 0: a drop
    assert message is not None and "drop 1" in message
    assert s.lr == pytest.approx(0.001)
    assert torch.allclose(s.optimizer.state[model_param]["momentum_buffer"], buffer * 10)
    assert not s.finished
    s.start_epoch()
    s.end_epoch(0.5)
    assert s.finished and math.isclose(s.lr, 1e-4)


def test_the_plateau_rule_waits_its_minimum_steps_at_each_lr():
    """--plateau-min-steps: epochs are not judged before that many steps at the current lr
    (a tiny folder's 6-step epochs were cut at steps 36 and 54, before its loss left chance);
    after a drop the count starts again; 0 is §5's rule, which judges every epoch."""
    s = _schedule(schedule="plateau", plateau_patience=0, plateau_min_steps=25, lr=0.01)
    drops = []
    for _ in range(8):  # 10 steps an epoch, the error never improves
        s.start_epoch()
        _run_steps(s, STEPS_PER_EPOCH)
        drops.append(s.end_epoch(0.5) is not None)
    # judged from epoch 3 (30 steps): it sets the best; epoch 4 drops; at the new lr judged
    # from epoch 7, which drops again (the best error is kept across a drop, as in §5's rule)
    assert drops == [False, False, False, True, False, False, True, False]
    assert s.lr == pytest.approx(1e-4)
    state = s.state_dict()
    assert state["steps_at_lr"] == 10
    again = _schedule(schedule="plateau", plateau_patience=0, plateau_min_steps=25, lr=0.01)
    again.resume(state, s.cfg, lambda line: None)
    assert again.steps_at_lr == 10
    # a checkpoint from before the option: its lr counts as judged already
    old = {k: v for k, v in state.items() if k != "steps_at_lr"}
    again.resume(old, s.cfg, lambda line: None)
    assert again.steps_at_lr == 25


def test_the_folder_recipe_waits_and_the_paper_recipe_does_not():
    from alexnet.core.recipes import resolve

    assert resolve("/my/photos", {}, {}, {}).train.plateau_min_steps == 300
    assert resolve("/my/photos", {}, {}, {}, recipe="paper").train.plateau_min_steps == 0


def test_an_old_lambdalr_checkpoint_resumes_at_its_step():
    """Checkpoints written before lr_at kept LambdaLR's state: its step count (last_epoch)
    continues the same per-step learning rates."""
    reference = _schedule(epochs=3)
    _run_steps(reference, 13)
    old_state = {"base_lrs": [0.1], "last_epoch": 13, "_step_count": 14, "lr_lambdas": [None], "steps_at_lr": 13}
    resumed = _schedule(epochs=3)
    lines = []
    resumed.resume(old_state, reference.cfg, lines.append)
    assert lines == [] and resumed.lr == pytest.approx(reference.lr) and resumed.step == 13


def test_a_new_length_is_the_multipliers_of_that_length_from_the_current_step():
    s = _schedule(epochs=2)
    _run_steps(s, 7)
    s.set_length(TrainConfig(schedule="onecycle", epochs=4, lr=0.1, warmup_epochs=0.5))
    assert s.lr == pytest.approx(0.1 * LrSchedule("onecycle", 4, STEPS_PER_EPOCH, 30, 0.5)(7))
    _run_steps(s, 4 * STEPS_PER_EPOCH - 7)
    assert s.lr == pytest.approx(0.0, abs=1e-12)
