"""What a run decides on the machine in front of it: the precision, and for a time budget
the number of epochs.

Why measure instead of assuming: what is fast differs from machine to machine. bf16
autocast trained the `small` model about 2x faster than fp32 on a Xeon with AMX, 1.3x on
an AMD EPYC with AVX512-BF16, 0.8x on a Xeon with AVX512-BF16 but no AMX, and 0.45x on a
Xeon without native bf16, where oneDNN emulates it (docs/BENCHMARKS.md). CPU flags do
not settle it (the third machine has the flag and is still slower in bf16), so on the CPU
`--amp auto` times a few real training steps of each precision on a copy of the model and
takes the faster; on CUDA the same where the card computes bf16 natively (compute
capability 8.0, Ampere, and later: a small model's step may be bound by kernel launches,
where bf16 gains nothing), else fp16 with a loss scaler. A time budget
(`--budget 5m`) is turned into a number of epochs from the same measurement, before the
first real step, so the run is the one `--epochs N` gives.

The decisions are one `Plan` (precision, LRN kernel, length, with their measurements and
reasons): `decide` makes a new run's, `resumed` continues a checkpoint's, `Plan.revise`
moves a budgeted run's end after its pace checks. The measuring itself comes in as
`Probes` (core/machine.py builds them, and caches their numbers between runs), so this
module needs neither the model nor the data.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import UserError

if TYPE_CHECKING:  # torch is imported where it is used: the command line parses --budget without it
    import torch

    from ..config import TrainConfig

# bf16 must be at least this much faster than fp32 to be chosen: it rounds more, and a
# smaller gain is within the noise of a few timed steps on a shared machine.
BF16_MIN_SPEEDUP = 1.05
# Timing: warm-up steps per candidate (oneDNN builds its kernels on the first calls),
# then rounds of one step per candidate, alternating, until MEASURE_ROUNDS rounds or
# MEASURE_SECONDS have been spent (at least MIN_ROUNDS); the median step counts.
WARMUP_STEPS, MEASURE_ROUNDS, MIN_ROUNDS, MEASURE_SECONDS = 2, 7, 3, 8.0
# Part of a budget kept free for what the plan cannot foresee: a machine's speed drifts
# within a run (a shared 2-core VM trained at 2,250 images/s in its first epochs and
# 2,120-2,150 in its last; with a 4% margin that run ended 8 s past its 5 minutes), and
# the loop does a little more than the timed steps (loading, logging, health checks).
BUDGET_MARGIN = 0.10
# After each epoch a budgeted run checks its own pace; what is left is then known better
# than before the first step, so a smaller margin is kept.
REVISE_MARGIN = 0.03

PRECISION_NAMES = {"off": "fp32", "bf16": "bf16", "fp16": "fp16"}


@dataclass(frozen=True)
class Precision:
    amp: str  # what the run uses: "off" (fp32), "bf16" or "fp16"
    reason: str  # why, for the run header and config.json
    ms_per_step: dict[str, float] = field(default_factory=dict)  # measured, by candidate

    def describe(self) -> str:
        return f"precision {PRECISION_NAMES[self.amp]} ({self.reason})"


def time_steps(
    steps: dict[str, Callable[[], None]],
    sync: Callable[[], None] = lambda: None,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, float]:
    """Median seconds per call of each step function, calls alternating between them."""
    for fn in steps.values():
        for _ in range(WARMUP_STEPS):
            fn()
    sync()
    times: dict[str, list[float]] = {name: [] for name in steps}
    started = clock()
    for round_ in range(MEASURE_ROUNDS):
        if round_ >= MIN_ROUNDS and clock() - started > MEASURE_SECONDS:
            break
        for name, fn in steps.items():
            t = clock()
            fn()
            sync()
            times[name].append(clock() - t)
    return {name: statistics.median(v) for name, v in times.items()}


def choose_precision(
    requested: str, device: torch.device, measure: Callable[[list[str]], dict[str, float]]
) -> Precision:
    """The run's autocast precision. `measure(candidates)` returns seconds per training
    step for each candidate ("off", "bf16"); it is called only when the choice needs it."""
    if requested != "auto":
        return Precision(requested, "as asked")
    where = "this CPU"
    if device.type == "cuda":
        import torch

        native = cuda_precision(torch.cuda.get_device_capability(device), torch.cuda.get_device_name(device))
        if native.amp != "bf16":  # an older card: fp16 with a loss scaler, not timed
            return native
        where = torch.cuda.get_device_name(device)  # bf16 is native: still timed, it may not pay
    elif device.type != "cpu":  # Apple MPS: autocast there is not measured by this version
        return Precision("off", f"fp32 on {device.type}: autocast is measured on CPUs and CUDA only")
    return _faster(measure(["off", "bf16"]), where)


def _faster(seconds: dict[str, float], where: str) -> Precision:
    """bf16 if it timed at least BF16_MIN_SPEEDUP faster than fp32 (on CUDA: TF32 unless
    --no-tf32), else fp32."""
    ms = {k: round(v * 1000, 2) for k, v in seconds.items()}
    speedup = seconds["off"] / seconds["bf16"]
    pair = f"{ms['bf16']:.0f} against {ms['off']:.0f} ms a step"
    if speedup >= BF16_MIN_SPEEDUP:
        return Precision("bf16", f"measured {speedup:.2f}x faster than fp32 on {where}: {pair}", ms)
    if speedup < 1:
        return Precision("off", f"bf16 measured {1 / speedup:.2f}x slower on {where}: {pair}", ms)
    return Precision("off", f"bf16 measured only {speedup:.2f}x faster on {where} ({pair}): not worth its rounding", ms)


# bf16 tensor cores arrived with compute capability 8.0 (Ampere). torch.cuda.is_bf16_supported()
# also says True on older cards (V100 7.0, T4 7.5), where bf16 is emulated and slow.
BF16_CAPABILITY = (8, 0)


def cuda_precision(capability: tuple[int, int], name: str = "CUDA") -> Precision:
    """bf16 where the card computes it natively (compute capability 8.0 and later), else fp16
    with a loss scaler."""
    cc = f"compute capability {capability[0]}.{capability[1]}"
    if tuple(capability) >= BF16_CAPABILITY:
        return Precision("bf16", f"{name} ({cc}) computes bf16 natively")
    return Precision("fp16", f"{name} ({cc}) has no native bf16: fp16 with a loss scaler")


def training_step_timer(
    model: torch.nn.Module,
    make_optimizer: Callable[[torch.nn.Module], torch.optim.Optimizer],
    step: Callable[
        [torch.nn.Module, torch.optim.Optimizer, torch.amp.GradScaler, torch.Tensor, torch.Tensor, str], None
    ],
    batch: tuple[torch.Tensor, torch.Tensor],
    device: torch.device,
) -> Callable[[list[str]], dict[str, float]]:
    """measure(candidates) for choose_precision and plan_budget: real training steps
    (`step(model, optimizer, scaler, images, labels, amp)`) on copies of the model and its
    optimiser, with a real batch, so the run's own weights and random streams are untouched."""
    import torch

    from .runtime import grad_scaler

    def measure(candidates: list[str]) -> dict[str, float]:
        fns = {}
        for amp in candidates:
            replica = copy.deepcopy(model)
            optimizer = make_optimizer(replica)
            scaler = grad_scaler(device, amp)
            fns[amp] = lambda r=replica, o=optimizer, s=scaler, a=amp: step(r, o, s, *batch, a)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            return time_steps(fns, sync=lambda: torch.cuda.synchronize(device) if device.type == "cuda" else None)

    return measure


# ----------------------------------------------------------------------------- budgets

_BUDGET = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(s|sec|m|min|h)?\s*$")
_UNIT_SECONDS = {None: 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}


def parse_budget(text: str) -> float:
    """'300', '300s', '5m', '1.5h' -> seconds."""
    match = _BUDGET.match(str(text))
    if not match or float(match.group(1)) <= 0:
        raise UserError(f"--budget {text}: give a positive time such as 300s, 5m or 1.5h")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


@dataclass(frozen=True)
class BudgetPlan:
    budget_s: float  # the whole training, from start to the final validation
    spent_s: float  # before the first step (loading, measuring)
    step_s: float  # measured seconds per training step
    steps_per_epoch: int
    validation_s: float  # estimated seconds of one validation pass
    validations: int  # how many the plan's epochs do
    epochs: int  # epochs begun (the last may stop early)
    steps: int  # optimizer steps in all: what fits (at most the recipe's epochs)
    max_epochs: int = 0  # the recipe's epochs: the most a plan (or its revision) may take

    @property
    def estimate_s(self) -> float:
        return self.spent_s + self.steps * self.step_s + self.validations * self.validation_s

    def describe(self) -> str:
        over = " (not even one epoch fits: one epoch)" if self.estimate_s > self.budget_s else ""
        whole, part = divmod(self.steps, self.steps_per_epoch)
        length = (
            f"{self.epochs} epoch{'s' if self.epochs != 1 else ''} of {self.steps_per_epoch} steps"
            if not part
            else f"{self.steps} steps ({whole} epochs of {self.steps_per_epoch} and {part} steps)"
        )
        return (
            f"budget {format_seconds(self.budget_s)}: {length} at {self.step_s * 1000:.0f} ms a step, "
            f"{self.validations} validation{'s' if self.validations != 1 else ''} of "
            f"{self.validation_s:.1f} s, {format_seconds(self.estimate_s)} in all{over}"
        )


def validations(epochs: int, val_every: int) -> int:
    """Validation passes in `epochs` epochs: every val_every-th and the last (0: the last only)."""
    if val_every <= 0:
        return 1
    return epochs // val_every + (1 if epochs % val_every else 0)


def plan_budget(
    budget_s: float,
    spent_s: float,
    step_s: float,
    steps_per_epoch: int,
    validation_s: float,
    max_epochs: int,
    val_every: int,
    margin: float = BUDGET_MARGIN,
) -> BudgetPlan:
    """The most steps (up to max_epochs whole epochs) whose training and validations fit in
    the budget less a safety margin, after `spent_s`; whole epochs first, then as many steps
    of one more epoch as fit (its validation counted); at least one epoch."""
    usable = budget_s * (1 - margin) - spent_s

    def cost(epochs: int, steps: int) -> float:
        return steps * step_s + validations(epochs, val_every) * validation_s

    epochs = 1
    while epochs < max_epochs and cost(epochs + 1, (epochs + 1) * steps_per_epoch) <= usable:
        epochs += 1
    steps = epochs * steps_per_epoch
    if epochs < max_epochs and cost(epochs, steps) <= usable:  # part of one more epoch
        left = usable - cost(epochs + 1, steps)
        extra = min(steps_per_epoch - 1, max(0, math.floor(left / step_s)))
        if extra > 0:
            epochs, steps = epochs + 1, steps + extra
    return BudgetPlan(
        budget_s,
        spent_s,
        step_s,
        steps_per_epoch,
        validation_s,
        validations(epochs, val_every),
        epochs,
        steps,
        max_epochs,
    )


# A plan is lengthened only when the run's pace leaves this much more room, and shortened
# only when it would overrun by this much (REVISE_MARGIN still keeps 3% free): a run that
# keeps roughly to its measured pace is the run the plan announced, and the schedule does
# not jitter from epoch to epoch.
LENGTHEN_AT, SHORTEN_AT = 0.05, 0.01


def revised_steps(
    budget_s: float,
    elapsed_s: float,
    steps_done: int,
    step_s: float,
    planned: int,
    validation_s: float,
    most: int,
    margin: float = REVISE_MARGIN,
) -> int | None:
    """The steps in all that fit the budget at the run's measured pace (seconds per step in
    its last epoch), at most `most`: fewer when the plan would end past the budget, more
    when it would end more than LENGTHEN_AT early; None when the plan stands."""
    usable = budget_s * (1 - margin) - elapsed_s - validation_s
    fit = min(most, steps_done + max(0, math.floor(usable / step_s)))
    return fit if fit < planned * (1 - SHORTEN_AT) or fit > planned * (1 + LENGTHEN_AT) else None


def format_seconds(s: float) -> str:
    s = round(s)
    return f"{s // 60} min {s % 60:02d} s" if s >= 60 else f"{s} s"


# ----------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class LrnChoice:
    kernel: str  # what the LRN runs on the CPU: "fused" (lrn.c) or "torch"
    reason: str

    def describe(self) -> str:
        """The choice and why, as the run header and the inference commands say it."""
        return f"{'fused kernel' if self.kernel == 'fused' else 'torch operations'} ({self.reason})"


@dataclass(frozen=True)
class Revision:
    """A budgeted run's pace check moved its end (Plan.revise)."""

    steps: int
    planned_steps: int
    at_step: int
    step_s: float


@dataclass(frozen=True)
class Probes:
    """How decide() measures the machine (core/machine.py makes them; the cache may answer):
    step_seconds(candidates) -> seconds per training step of each precision;
    validation_seconds(amp) -> one validation pass; loader_seconds() -> a batch of a loader
    that works in processes, or None; lrn(asked) -> the LRN kernel and why."""

    step_seconds: Callable[[list[str]], dict[str, float]]
    validation_seconds: Callable[[str], float]
    loader_seconds: Callable[[], float | None]
    lrn: Callable[[str], LrnChoice]


@dataclass(frozen=True)
class Plan:
    """What a run decided on its machine: precision, LRN kernel and length (a budget's
    epochs and steps), the measurements behind them and why. config.json and checkpoints
    carry it as `plan` (to_dict); the decisions are also in `train` (apply)."""

    precision: Precision
    lrn: LrnChoice
    epochs: int
    steps: int | None
    budget: BudgetPlan | None = None
    loader_ms_per_batch: float | None = None
    revised: Revision | None = None
    measured: str = ""  # when the measurements were taken, if they came from the cache

    def apply(self, t: TrainConfig) -> TrainConfig:
        """The run's options with the decisions in them."""
        return dataclasses.replace(
            t, amp=self.precision.amp, epochs=self.epochs, steps=self.steps, lrn_kernel=self.lrn.kernel
        )

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "precision": dataclasses.asdict(self.precision),
            "epochs": self.epochs,
            "steps": self.steps,
            "lrn": dataclasses.asdict(self.lrn),
        }
        for name in ("budget", "revised"):
            if getattr(self, name) is not None:
                d[name] = dataclasses.asdict(getattr(self, name))
        if self.loader_ms_per_batch is not None:
            d["loader_ms_per_batch"] = self.loader_ms_per_batch
        if self.measured:
            d["measured"] = self.measured
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None, t: TrainConfig) -> Plan:
        """A checkpoint's plan (older ones: a partial dict, or none); what it lacks comes from
        its run's options `t`."""
        d = d or {}
        precision = d.get("precision") or {"amp": t.amp, "reason": "as asked"}
        return cls(
            Precision(precision["amp"], precision.get("reason", "as asked"), precision.get("ms_per_step", {})),
            LrnChoice(**(d.get("lrn") or {"kernel": t.lrn_kernel, "reason": "as asked"})),
            d.get("epochs", t.epochs),
            d.get("steps", t.steps),
            BudgetPlan(**d["budget"]) if d.get("budget") else None,
            d.get("loader_ms_per_batch"),
            Revision(**d["revised"]) if d.get("revised") else None,
            d.get("measured", ""),
        )

    def revise(self, elapsed_s: float, steps_done: int, step_s: float, steps_per_epoch: int) -> Plan | None:
        """A budgeted run's pace check after an epoch: the plan for the steps that fit at the
        pace of the last epoch (revised_steps), or None when it stands."""
        if self.budget is None:
            return None
        planned = self.steps or self.epochs * steps_per_epoch
        b = self.budget
        new = revised_steps(
            b.budget_s, elapsed_s, steps_done, step_s, planned, b.validation_s, most=b.max_epochs * steps_per_epoch
        )
        if new is None:
            return None
        revision = Revision(new, planned, steps_done, step_s)
        return dataclasses.replace(self, steps=new, epochs=-(-new // steps_per_epoch), revised=revision)

    def lines(self, t: TrainConfig, has_lrn: bool) -> list[str]:
        """The run header's account of what was decided and why."""
        cached = f"; measured {self.measured}, cached; --remeasure to measure again" if self.measured else ""
        timed = bool(self.precision.ms_per_step)  # the note goes with the timings it is about
        lines = [f"precision {PRECISION_NAMES[t.amp]} ({self.precision.reason}{cached if timed else ''})"]
        if has_lrn:
            lines.append(f"LRN {self.lrn.describe()}")
        if self.budget:
            lines.append(
                self.budget.describe()
                + f"; repeat exactly with --epochs {t.epochs} "
                + (f"--steps {t.steps} " if t.steps else "")
                + f"--amp {t.amp}"
                + (f" --lrn-kernel {t.lrn_kernel}" if has_lrn else "")
                + ("; torch.compile's first-step compilation is not in the plan" if t.compile else "")
                + (
                    f"; the loader delivers a batch in {self.loader_ms_per_batch:.0f} ms"
                    if self.loader_ms_per_batch is not None
                    else ""
                )
                + ("" if timed else cached)
            )
        return lines


def decide(
    t: TrainConfig, device: torch.device, probes: Probes, spent_s: Callable[[], float], steps_per_epoch: int
) -> Plan:
    """A new run's plan: the LRN kernel (before any step is timed), the precision (--amp
    auto: timed), and for a budget the steps that fit at the chosen precision's pace."""
    lrn = probes.lrn(t.lrn_kernel)
    if t.amp != "auto" and t.budget is None:
        return Plan(Precision(t.amp, "as asked"), lrn, t.epochs, t.steps)
    precision = choose_precision(t.amp, device, probes.step_seconds)
    plan = Plan(precision, lrn, t.epochs, t.steps)
    if t.budget is None:
        return plan
    step_s = (
        precision.ms_per_step[precision.amp] / 1000
        if precision.ms_per_step
        else probes.step_seconds([precision.amp])[precision.amp]
    )
    loader_s = probes.loader_seconds()
    if loader_s is not None:  # the loader, not the step, may bound an epoch (a folder on a GPU)
        step_s = max(step_s, loader_s)
    validation_s = probes.validation_seconds(precision.amp)
    budget = plan_budget(t.budget, spent_s(), step_s, steps_per_epoch, validation_s, t.epochs, t.val_every)
    steps = budget.steps if budget.steps != budget.epochs * budget.steps_per_epoch else None
    loader_ms = round(loader_s * 1000, 2) if loader_s is not None else None
    return dataclasses.replace(plan, epochs=budget.epochs, steps=steps, budget=budget, loader_ms_per_batch=loader_ms)


def resumed(before: Plan, was: TrainConfig, t: TrainConfig, device: torch.device, probes: Probes) -> Plan:
    """A resumed run's plan: its checkpoint's, so that it continues the same run; what the
    command line asks instead wins (--amp, --lrn-kernel, a new length without --budget).
    The checkpoint's fused kernel may not build here: then the auto choice."""
    from .runtime import stored_precision  # torch: not at import (the command line parses --budget)

    asked = was.lrn_kernel if t.lrn_kernel == "auto" else t.lrn_kernel
    try:
        lrn = probes.lrn(asked)
    except UserError:
        if t.lrn_kernel != "auto":
            raise
        lrn = probes.lrn("auto")
    amp = stored_precision(was.amp, device) if t.amp == "auto" else t.amp
    precision = before.precision if amp == was.amp else Precision(amp, _resumed_precision(was.amp, t.amp, device))
    planned = t.budget is not None and before.budget is not None
    epochs, steps = (was.epochs, was.steps) if planned else (t.epochs, t.steps)
    return dataclasses.replace(before, precision=precision, lrn=lrn, epochs=epochs, steps=steps)


def _resumed_precision(before: str, asked: str, device: torch.device) -> str:
    """Why a resumed run's precision differs from its checkpoint's."""
    if asked == "auto":
        return f"the checkpoint's {before} runs on CUDA only: fp32 on {device.type}"
    return "as asked when resuming"
