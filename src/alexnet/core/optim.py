"""§5's optimiser and the run's learning-rate schedule, in one object (`Schedule`).

The schedule owns every learning-rate decision of a run: the per-step multiplier (step,
onecycle: a pure function of the step, `lr_at`), the per-epoch plateau rule (§5), §5's
momentum rule across a drop, when a plateau run is finished, and what a resumed run
changes (another --lr, another length).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..config import TrainConfig
from ..run.errors import UserError

if TYPE_CHECKING:
    from collections.abc import Callable


def lr_at(
    step: int, kind: str, steps_per_epoch: int, total_steps: int, step_epochs: int, warmup_epochs: float
) -> float:
    """The learning-rate multiplier of optimiser step `step` (0-based) of a run of
    `total_steps` steps: a pure function, so a resume or a budget's revision is a new length.

    step:     /10 every `step_epochs` epochs: the Caffe/torchvision alternative to §5's
              plateau rule, for runs of a fixed length.
    onecycle: linear warm-up, then a cosine from 1 to 0 over the remaining steps: gets
              the most out of a short, fixed budget, such as the Fashion-MNIST recipe.
    """
    if kind == "step":
        return 0.1 ** (step // (step_epochs * steps_per_epoch))
    warm = warmup_epochs * steps_per_epoch
    if step < warm:
        return (step + 1) / warm
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1.0, total_steps - warm))))


@dataclass(frozen=True)
class LrSchedule:
    """A run's per-step multipliers (lr_at) with its length: step or onecycle."""

    kind: str
    epochs: int
    steps_per_epoch: int
    step_epochs: int
    warmup_epochs: float
    total_steps: int | None = None  # the run's length in steps (None: epochs x steps_per_epoch)

    def __call__(self, step: int) -> float:
        total = self.total_steps or self.epochs * self.steps_per_epoch
        return lr_at(step, self.kind, self.steps_per_epoch, total, self.step_epochs, self.warmup_epochs)

    @classmethod
    def for_run(cls, cfg: TrainConfig, steps_per_epoch: int) -> LrSchedule:
        return cls(cfg.schedule, cfg.epochs, steps_per_epoch, cfg.step_epochs, cfg.warmup_epochs, cfg.steps)


def plateau_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.ReduceLROnPlateau:
    """plateau (§5): lr / 10 when the validation error has not improved by `plateau_threshold`
    for more than `plateau_patience` epochs (the paper gives no numbers: ours), stepped
    once per epoch with the error."""
    return torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer,
        mode="min",
        factor=0.1,
        patience=cfg.plateau_patience,
        threshold=cfg.plateau_threshold,
        threshold_mode="abs",
        eps=0.0,
    )


def lr_drops(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> int:
    """How many times the learning rate has been divided by 10 so far."""
    return round(math.log10(cfg.lr / optimizer.param_groups[0]["lr"]))


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.SGD:
    """§5's SGD: momentum 0.9, weight decay 5e-4, one lr for every layer (cfg's values)."""
    # §5 writes the update as  v <- 0.9 v - 0.0005 lr w - lr grad;  w <- w + v.
    # PyTorch's SGD keeps b <- 0.9 b + (grad + 0.0005 w);  w <- w - lr b, i.e. b = -v / lr.
    # The two are the same while lr is constant. After a drop from lr0 to lr1 the paper's
    # velocity v still moves the weights by the old lr0's steps, decaying by 0.9 a step;
    # PyTorch's b is in gradient units, so the step shrinks to lr1's at once.
    # momentum_rule "paper" (the default) keeps the paper's: see paper_momentum_at_drop.
    # fused: the whole update in one kernel (CPU and CUDA), the same numbers as foreach;
    # 12 against 83 ms a step for the paper model's 61 M parameters on a 2-core CPU.
    fused = next(model.parameters()).device.type in ("cpu", "cuda")
    return torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad],  # not the layers --freeze keeps
        lr=cfg.lr,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
        foreach=None if fused else True,
        fused=fused or None,
    )


def paper_momentum_at_drop(optimizer: torch.optim.SGD, old_lr: float, new_lr: float) -> None:
    """Make PyTorch's SGD follow §5's rule across a drop: b = -v / lr, so b *= old / new."""
    for state in optimizer.state.values():
        if state.get("momentum_buffer") is not None:
            state["momentum_buffer"].mul_(old_lr / new_lr)


class Schedule:
    """The learning rate of a run, step by step and epoch by epoch.

    step, onecycle: after_step() sets the next step's lr, cfg.lr x lr_at(step); the only
    state is the step count. plateau: end_epoch(error) steps ReduceLROnPlateau with the
    validation error once the lr has had cfg.plateau_min_steps steps; a drop applies the
    momentum rule; `finished` once it has dropped `lr_drops` times and stalled again (§5).
    """

    def __init__(self, optimizer: torch.optim.SGD, cfg: TrainConfig, steps_per_epoch: int) -> None:
        self.optimizer, self.cfg, self.steps_per_epoch = optimizer, cfg, steps_per_epoch
        self.per_step = cfg.schedule != "plateau"
        self.plateau = None if self.per_step else plateau_scheduler(optimizer, cfg)
        self.shape = LrSchedule.for_run(cfg, steps_per_epoch)
        self.step = 0  # optimiser steps taken (step, onecycle)
        if self.per_step:
            self._set_lr()
        self._epoch_lr = self.lr
        # plateau: optimiser steps since the lr last changed. The plateau rule judges no
        # epoch until cfg.plateau_min_steps of them (a folder of two dozen photos has 6
        # steps an epoch: its lr was cut at steps 36 and 54, before the loss left chance)
        self.steps_at_lr = 0

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def _set_lr(self) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = self.cfg.lr * self.shape(self.step)

    def after_step(self) -> None:
        self.steps_at_lr += 1
        if self.per_step:
            self.step += 1
            self._set_lr()

    def start_epoch(self) -> float:
        """The lr the epoch starts with (metrics.csv's `lr`)."""
        self._epoch_lr = self.lr
        return self._epoch_lr

    def end_epoch(self, val_error: float | None) -> str | None:
        """The per-epoch decision; returns a line for the log when the lr dropped."""
        if self.plateau is not None and self.steps_at_lr >= self.cfg.plateau_min_steps:
            self.plateau.step(val_error)
        old, new = self._epoch_lr, self.lr
        if new >= old or self.cfg.schedule == "onecycle":
            return None
        self.steps_at_lr = 0
        if self.cfg.momentum_rule == "paper":
            paper_momentum_at_drop(self.optimizer, old, new)
        return f"learning rate {old:.3g} -> {new:.3g} (drop {lr_drops(self.optimizer, self.cfg)})"

    @property
    def finished(self) -> bool:
        """§5: the lr was divided by 10 three times, and the error stopped improving again."""
        return not self.per_step and lr_drops(self.optimizer, self.cfg) > self.cfg.lr_drops

    def set_length(self, cfg: TrainConfig) -> None:
        """A run's length changed (a budget's revision): the multipliers of the new length
        from the next step on."""
        self.cfg, self.shape = cfg, LrSchedule.for_run(cfg, self.steps_per_epoch)
        if self.per_step:
            self._set_lr()

    def state_dict(self) -> dict:
        if self.plateau is not None:
            return {**self.plateau.state_dict(), "steps_at_lr": self.steps_at_lr}
        return {"step": self.step, "steps_at_lr": self.steps_at_lr}

    def resume(self, state: dict, before: TrainConfig, log: Callable[[str], None]) -> None:
        """Continue from a checkpoint's schedule (ours, or an older LambdaLR's); a new --lr
        scales it, and a new length (--epochs, --steps, --warmup-epochs, --step-epochs)
        applies from here on."""
        if before.schedule != self.cfg.schedule:
            raise UserError(
                f"--schedule {self.cfg.schedule}: the checkpoint's run used "
                f"{before.schedule}; a run keeps its schedule (start a new run instead)"
            )
        state = dict(state)
        # a checkpoint from before plateau_min_steps: its lr has been judged already
        self.steps_at_lr = state.pop("steps_at_lr", self.cfg.plateau_min_steps)
        if self.plateau is not None:
            self.plateau.load_state_dict(state)
            self._scale_lr(before.lr, log)
        else:
            self.step = state["step"] if "step" in state else state["last_epoch"]  # LambdaLR's count
            if LrSchedule.for_run(before, self.steps_per_epoch) != self.shape:
                log(
                    f"alexnet: schedule {self.cfg.schedule} rebuilt for {self._length(self.cfg)} "
                    f"(was {self._length(before)}); it continues from step {self.step}"
                )
            if self.cfg.lr != before.lr:
                log(f"alexnet: learning rate scaled by {self.cfg.lr / before.lr:g} ({before.lr:g} -> {self.cfg.lr:g})")
            self._set_lr()
        self._epoch_lr = self.lr

    def _length(self, cfg: TrainConfig) -> str:
        steps = cfg.steps or cfg.epochs * self.steps_per_epoch
        return f"{cfg.epochs} epochs, {steps} steps"

    def _scale_lr(self, old_lr: float, log: Callable[[str], None]) -> None:
        """A resumed plateau run given another --lr (say, after a divergence) scales its lr."""
        new_lr = self.cfg.lr
        if new_lr == old_lr:
            return
        ratio = new_lr / old_lr
        for group in self.optimizer.param_groups:
            group["lr"] *= ratio
        log(f"alexnet: learning rate scaled by {ratio:g} ({old_lr:g} -> {new_lr:g})")
