"""Training health: say early, in one line, when a run diverges or does not learn.

The training loop feeds a HealthMonitor what it already has: the mean training loss of
each window of `log_every` steps (one host sync per window), the validation loss after
an epoch, and, when it likes, the model right after a step (its gradients). The monitor
answers with a HealthEvent or None:

- fatal (stop the run, it diverged):
  `non_finite`      a window's mean loss is NaN or infinite;
  `exploding`       the window mean is above explode_factor x ln C (C classes; ln C is the
                    loss of a uniform guess, where a fresh network starts) in
                    `explode_windows` (2) windows in a row: a sustained rise, not one noisy
                    step, which a 20-step mean absorbs anyway;
  `non_finite_val`  the validation loss is NaN or infinite.
- warnings (said once per run, then the run goes on):
  `not_learning`    by step `flat_steps` no window mean has fallen below ln C - flat_margin:
                    the loss is still at chance (or above it);
  `dead_gradients`  the gradient of some conv/linear weight is exactly zero everywhere:
                    no ReLU in front of (or behind) that layer lets a gradient through.

Why flat_steps = 300 and flat_margin = 0.1 (nats). Measured with benchmarks/health.py
(`alexnet train` in process, every step's loss recorded, 20-step window means; one
epoch, 468 steps of batch 128, all 60,000 Fashion-MNIST images, seed 0, fp32, the
Fashion-MNIST recipe: lr 0.04 with a one-epoch linear warm-up, label smoothing 0.1;
Intel(R) Xeon(R) Processor, 1 thread, torch 2.14.1):

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/health.py --steps 468 [-- OPTIONS]

    OPTIONS                 window means (ln 10 = 2.3026)          first window < ln C - 0.1
    (none: He init)         3.262 2.259 2.058 1.712 1.466 ... 0.940  step 60
    --lr 0.01 (200 steps)   3.817 2.382 2.217 2.071 1.866 ... 1.265  step 80
    --init paper            2.363 ... 2.369 ... 2.303 ... 2.304      never (lowest 2.3033)
    --init torch --lr 0.02  2.302 ... 2.303 ... 2.300                never (lowest 2.3002)

The flat runs never came more than 0.0024 below ln C (paper init stayed above it, up to
+0.069); the learning runs were 0.2 below by step 60-80 and 1.0-1.4 below by the end.
A margin of 0.1 is 40x the flat runs' dip and crossed within 3-4 windows of learning;
300 steps is 4-5x what the learning runs needed (a lower lr or longer warm-up leaves
later: lr / 4 took 80 steps, not 60) and leaves the flat runs' warning inside their
first epoch (the check runs at the first window at or after step 300). Short runs
(--limit-train) have fewer steps: pass flat_steps for them. Label smoothing raises the
loss's floor, not its start, so it does not move these numbers. A divergence at
--lr 0.3 --warmup-epochs 0.05 went 2.3 -> 5.6 -> 105 -> 2.6e5 -> 1.5e16 -> NaN in
consecutive steps: most divergences reach the non-finite check; `exploding` is for the
slower ones.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where it is used: the recipes read FLAT_STEPS without it
    import torch

NON_FINITE = "non_finite"
EXPLODING = "exploding"
NOT_LEARNING = "not_learning"
DEAD_GRADIENTS = "dead_gradients"
NON_FINITE_VAL = "non_finite_val"
VAL_AT_CHANCE = "val_at_chance"
KINDS = (NON_FINITE, EXPLODING, NOT_LEARNING, DEAD_GRADIENTS, NON_FINITE_VAL, VAL_AT_CHANCE)

FLAT_STEPS = 300  # measured: see the module docstring
FLAT_MARGIN = 0.1  # nats below ln C; measured: see the module docstring
EXPLODE_FACTOR = 10.0  # the "ten times ln C"
EXPLODE_WINDOWS = 2  # windows in a row above it

# What to try; the caller adds where the last good checkpoint is.
DIVERGED_ADVICE = "try a lower --lr, --init caffe or a warm-up (--warmup-epochs)"
# Added to DIVERGED_ADVICE under autocast: bf16 rounds to 8 bits of mantissa, and fp16
# overflows above 65,504 (the loss scaler guards the gradients, not the activations).
LOW_PRECISION_ADVICE = {
    "bf16": "; low precision (bf16) may be the cause: try --amp off (fp32)",
    "fp16": "; low precision (fp16) may be the cause: try --amp bf16 or --amp off (fp32)",
}
END_ADVICE = "try more --epochs, another --lr, --init caffe or a warm-up (--warmup-epochs)"
VAL_ADVICE = "more images per class, or fine-tuning a trained network (--init-from)"
STUCK_ADVICE = (
    "try another --lr, --init caffe or a warm-up (--warmup-epochs); "
    "with the paper's init (--init paper) the loss may still leave this plateau later"
)


@dataclass(frozen=True)
class HealthEvent:
    kind: str  # one of KINDS
    step: int  # global step of the window (the epoch, 1-based as printed, for validation)
    fatal: bool  # True: stop the run (it diverged); False: a warning, said once
    message: str  # one line: what happened, where, and the advice

    def to_dict(self) -> dict:
        """Plain str/int/bool values: JSON-safe and loadable with weights_only=True."""
        return asdict(self)


def gradient_probe(model: torch.nn.Module) -> tuple[list[str], torch.Tensor]:
    """The conv/linear layers that have a weight gradient, and a float64 tensor on their
    device with 1 where that gradient is exactly zero everywhere, else 0 (no host sync: the
    caller reads it with whatever else it syncs)."""
    import torch

    names, zero = [], []
    for name, module in model.named_modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.modules.conv._ConvNd)):
            grad = module.weight.grad
            if grad is not None:  # None: frozen or not used this step, nothing to judge
                names.append(name or type(module).__name__)
                zero.append((grad.detach().abs().amax() == 0).double())
    return names, torch.stack(zero) if zero else torch.zeros(0, dtype=torch.float64)


class HealthMonitor:
    """Watches one run; keep one per run and checkpoint its state_dict with the run.

    num_classes: C; the loss of a uniform guess, ln C, is the reference of the level checks
    (which are off for C < 2: one class has a loss of 0 and nothing to learn).
    flat_steps, flat_margin: `not_learning` when no window mean is below ln C - flat_margin
    by global step flat_steps. explode_factor, explode_windows: `exploding` when
    explode_windows window means in a row are above explode_factor x ln C.
    precision: the run's autocast ("off", "bf16", "fp16"); under bf16/fp16 the divergence
    advice names low precision as a possible cause.
    events: every event returned so far, for the run's metrics and JSON summary.
    """

    def __init__(
        self,
        num_classes: int,
        flat_steps: int = FLAT_STEPS,
        explode_factor: float = EXPLODE_FACTOR,
        flat_margin: float = FLAT_MARGIN,
        explode_windows: int = EXPLODE_WINDOWS,
        precision: str = "off",
    ) -> None:
        if num_classes < 1 or flat_steps < 0 or flat_margin < 0 or explode_factor <= 0 or explode_windows < 1:
            raise ValueError(
                f"HealthMonitor: bad thresholds (num_classes {num_classes}, flat_steps "
                f"{flat_steps}, flat_margin {flat_margin}, explode_factor {explode_factor}, "
                f"explode_windows {explode_windows})"
            )
        self.num_classes, self.flat_steps, self.flat_margin = num_classes, flat_steps, flat_margin
        self.explode_factor, self.explode_windows = explode_factor, explode_windows
        self.diverged_advice = DIVERGED_ADVICE + LOW_PRECISION_ADVICE.get(precision, "")
        self.events: list[HealthEvent] = []
        # the state (state_dict): whether the loss ever left chance, how many windows in a
        # row were above the explosion level, and the warnings given (each is said once)
        self.learned = False
        self.explode_streak = 0
        self.warned: set[str] = set()

    @property
    def chance_loss(self) -> float:
        return math.log(self.num_classes)

    @property
    def explode_level(self) -> float:
        return self.explode_factor * self.chance_loss

    def _emit(self, kind: str, step: int, fatal: bool, message: str) -> HealthEvent | None:
        """Record and return an event; a warning already given returns None."""
        if not fatal:
            if kind in self.warned:
                return None
            self.warned.add(kind)
        event = HealthEvent(kind, step, fatal, message)
        self.events.append(event)
        return event

    def window(self, step: int, mean_loss: float) -> HealthEvent | None:
        """The mean training loss of the window of steps that ends at global `step`."""
        if not math.isfinite(mean_loss):
            return self._emit(
                NON_FINITE,
                step,
                True,
                f"step {step}: training loss is {mean_loss}: training diverged; {self.diverged_advice}",
            )
        if self.num_classes < 2:
            return None
        ln_c = self.chance_loss
        self.explode_streak = self.explode_streak + 1 if mean_loss > self.explode_level else 0
        if self.explode_streak >= self.explode_windows:
            return self._emit(
                EXPLODING,
                step,
                True,
                f"step {step}: training loss {mean_loss:.4g} above {self.explode_factor:g} x "
                f"ln {self.num_classes} = {self.explode_level:.4g} for {self.explode_streak} "
                f"windows in a row: training diverged; {self.diverged_advice}",
            )
        # learned first: a run resumed with a fresh monitor judges its current loss
        self.learned = self.learned or mean_loss < ln_c - self.flat_margin
        if not self.learned and step >= self.flat_steps:
            return self._emit(
                NOT_LEARNING,
                step,
                False,
                f"step {step}: training loss {mean_loss:.4f} has not fallen below ln "
                f"{self.num_classes} - {self.flat_margin:g} = {ln_c - self.flat_margin:.4f} "
                f"(chance is {ln_c:.4f}): the network is not learning; {STUCK_ADVICE}",
            )
        return None

    def validation(self, epoch: int, val_loss: float) -> HealthEvent | None:
        """The validation loss after `epoch` (pass it 1-based, as the log prints it)."""
        if math.isfinite(val_loss):
            return None
        return self._emit(
            NON_FINITE_VAL,
            epoch,
            True,
            f"epoch {epoch}: validation loss is {val_loss}: training diverged; {self.diverged_advice}",
        )

    @property
    def wants_gradients(self) -> bool:
        """False once the dead-gradient warning was given (it is said once: spare the probe)."""
        return DEAD_GRADIENTS not in self.warned

    def epoch(self, mean_loss: float) -> None:
        """The mean training loss of a whole epoch: it too counts as having left chance (a
        run of a few steps an epoch may never fill a window)."""
        self.learned = self.learned or (math.isfinite(mean_loss) and mean_loss < self.chance_loss - self.flat_margin)

    def final(self, step: int, val_top1: float | None) -> HealthEvent | None:
        """The verdict at the end of a run (at global `step`): a warning, so that the run
        does not end "done", when its training loss never left chance (the window check
        never fired: a short run ends before flat_steps), or when its validation top-1 is
        no better than a guess."""
        if self.num_classes < 2:
            return None
        chance = 1 / self.num_classes
        if not self.learned:
            return self._emit(
                NOT_LEARNING,
                step,
                False,
                f"step {step}: the run ended with its training loss never below ln "
                f"{self.num_classes} - {self.flat_margin:g} = {self.chance_loss - self.flat_margin:.4f} "
                f"(chance is {self.chance_loss:.4f}): the network did not learn; {END_ADVICE}",
            )
        if val_top1 is not None and val_top1 <= chance + 1e-9:
            return self._emit(
                VAL_AT_CHANCE,
                step,
                False,
                f"step {step}: validation top-1 {val_top1:.4f} is no better than a guess (1/{self.num_classes}): "
                f"the network fits its training images but not the classes; {VAL_ADVICE}",
            )
        return None

    def gradients(self, step: int, model: torch.nn.Module) -> HealthEvent | None:
        """Check the gradients the last backward left in `model` (call after the step, before
        the next zero_grad; one host sync). Pass the unwrapped model for plain layer names."""
        if not self.wants_gradients:
            return None
        names, zero = gradient_probe(model)
        return self.dead_layers(step, [n for n, z in zip(names, zero.tolist()) if z])

    def dead_layers(self, step: int, dead: list[str]) -> HealthEvent | None:
        """The layers whose weight gradients were found all zero at `step` (gradient_probe)."""
        if not dead or not self.wants_gradients:
            return None
        return self._emit(
            DEAD_GRADIENTS,
            step,
            False,
            f"step {step}: the weight gradients of {', '.join(dead)} are exactly zero "
            f"(dead ReLUs: no unit passes a gradient): the network is not learning there; "
            f"{STUCK_ADVICE}",
        )

    def state_dict(self) -> dict:
        """Plain values (bool, int, str lists and dicts): safe in a weights_only checkpoint."""
        return {
            "learned": self.learned,
            "explode_streak": self.explode_streak,
            "warned": sorted(self.warned),
            "events": [e.to_dict() for e in self.events],
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue a checkpointed run; {} (a checkpoint from before this module) starts afresh."""
        self.learned = bool(state.get("learned", False))
        self.explode_streak = int(state.get("explode_streak", 0))
        self.warned = set(state.get("warned", ()))
        self.events = [HealthEvent(**e) for e in state.get("events", ())]
