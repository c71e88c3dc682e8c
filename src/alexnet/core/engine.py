"""One training epoch (train_one_epoch) and one evaluation pass (evaluate_loader); the
entry points (train.py, evaluate.py) decide what to run.

train_one_epoch is the loop in torchvision's reference shape: for each batch, reseed,
preprocess, the forward and the loss under autocast, zero_grad, the scaled backward,
the optimiser and scaler steps, the per-step learning rate, and the bookkeeping (running
sums on the device; one host sync a window of log_every steps). Its result is an
EpochResult; evaluation's an Evaluation, both over all processes.

Under torchrun, DDP all-reduces the gradients inside every backward (its own buckets,
not a call here); besides that, an epoch makes one all-reduce a window of log_every
steps and one at its end (the totals, the gradient probe and the stop flag together),
and an evaluation pass one in all.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..run.distributed import Dist, sum_tensor
from ..run.errors import Unhealthy
from ..run.health import HealthMonitor, gradient_probe
from ..run.runtime import autocast

if TYPE_CHECKING:
    from ..data.loaders import Loader
    from .augment import Preprocess


def topk_hits(logits: torch.Tensor, target: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> torch.Tensor:
    """How many rows have their target among the top k logits, for each k: a tensor on the
    logits' device (no host sync)."""
    kmax = min(max(ks), logits.shape[1])
    pred = logits.topk(kmax, dim=1).indices
    hit = pred.eq(target[:, None])
    return torch.stack([hit[:, : min(k, kmax)].any(dim=1).sum() for k in ks])


def step_seed(seed: int, epoch: int, step: int, rank: int) -> int:
    """The RNG seed of one training step of one process.

    Every step reseeds, so that its dropout masks, crops, mirrors and lighting are a
    function of (seed, epoch, step, rank) alone: a run resumed at any step, with no RNG
    state carried over, draws what the uninterrupted run drew.
    """
    return ((seed * 1_000_003 + epoch) * 1_000_003 + step) * 1_009 + rank


def _sync(values: list[torch.Tensor], device: torch.device, d: Dist) -> list[float]:
    """The float64 scalars and vectors `values` (on the device), summed over all processes
    (one all-reduce under torchrun) and read on the host: the one host sync of a window."""
    flat = torch.cat([v.to(device, torch.float64).reshape(-1) for v in values])
    return sum_tensor(flat, device, d).tolist()


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    images: torch.Tensor,
    labels: torch.Tensor,
    amp: str,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """train_one_epoch's step on a preprocessed batch, alone: what the plan (plan.py) and
    the benchmarks time. Returns the loss and the logits (not synced)."""
    with autocast(images.device, amp):
        logits = model(images)
        loss = F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss, logits


@dataclass
class Training:
    """What every training step of a run uses, built once per run."""

    net: torch.nn.Module  # the model as trained: itself, or its DDP / compiled wrapper
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    preprocess: Preprocess  # augment.Preprocess: uint8 batch on the device -> input
    device: torch.device
    amp: str = "off"
    label_smoothing: float = 0.0
    after_step: Callable[[], None] = lambda: None  # the per-step learning rate (optim.Schedule)
    seed: int = 0  # with epoch, step and rank: every step's randomness (step_seed)


@dataclass
class Watch:
    """How an epoch reports and checks itself: progress bar, health checks, stop requests."""

    d: Dist = field(default_factory=Dist)
    health: HealthMonitor | None = None  # None: the NaN/inf checks only
    log_every: int = 20
    show: bool = True
    should_stop: Callable[[], bool] = lambda: False
    desc: str = "train"


@dataclass(frozen=True)
class EpochResult:
    """One epoch's training, over all processes."""

    loss: float  # mean training loss per image
    top1: float  # training accuracy (augmented batches, dropout on)
    images: int
    seconds: float
    steps: int  # the index of the next batch: the epoch's steps done, a resume's included
    stopped: bool  # should_stop() became true on some process; the step it was seen at is done

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


def train_one_epoch(
    t: Training, loader: Loader, epoch: int = 0, first: int = 0, last: int | None = None, watch: Watch = Watch()
) -> EpochResult:
    """Train on `loader`'s batches `first` (a mid-epoch resume) to `last` (None: the end;
    earlier in the last epoch of a run of a given number of steps) of `epoch`.

    Every log_every steps and at the end, the window's mean loss and the gradients go to
    the health monitor (health.py), on all processes at once: a divergence raises
    Unhealthy, a warning is printed once. A stop request (should_stop) is seen at the next
    window under torchrun, at once alone.
    """
    d, device, net = watch.d, t.device, t.net
    end = len(loader) if last is None else min(last, len(loader))
    windows = _Windows(watch, getattr(net, "module", net), epoch * len(loader), device)
    bar = _progress(loader, watch, end - first)
    loss_sum, correct = torch.zeros((), device=device), torch.zeros((), device=device)
    seen, step, stopped, start = 0, first, False, time.perf_counter()
    net.train()
    for step, (images, labels) in enumerate(bar, start=first):
        torch.manual_seed(step_seed(t.seed, epoch, step, d.rank))
        images = t.preprocess(images.to(device, non_blocking=True), train=True)
        labels = labels.to(device, non_blocking=True)
        with autocast(device, t.amp):
            logits = net(images)
            loss = F.cross_entropy(logits, labels, label_smoothing=t.label_smoothing)
        t.optimizer.zero_grad(set_to_none=True)
        t.scaler.scale(loss).backward()  # under DDP: the gradients' all-reduce, every step
        t.scaler.step(t.optimizer)
        t.scaler.update()
        t.after_step()
        loss_sum += loss.detach() * labels.shape[0]
        correct += (logits.detach().argmax(1) == labels).sum()
        seen += labels.shape[0]
        if step + 1 >= end:
            break
        if (step + 1) % watch.log_every == 0:  # the window's one sync (one all-reduce under DDP)
            totals, stopped = windows.close(step, loss_sum, correct, seen, watch.should_stop())
            _show_progress(bar, totals, t.optimizer.param_groups[0]["lr"], time.perf_counter() - start)
        elif not d.enabled:  # alone, a stop request costs no sync: seen at once
            stopped = watch.should_stop()
        if stopped:
            break
    bar.close()
    totals, _ = windows.close(step, loss_sum, correct, seen, False)
    images = max(totals[2], 1.0)
    seconds = time.perf_counter() - start
    return EpochResult(totals[0] / images, totals[1] / images, int(totals[2]), seconds, step + 1, stopped)


class _Windows:
    """Closes the windows of steps between two syncs: the epoch's running totals, the stop
    flag and which layers' gradients are all zero go in one all-reduce (every process sees
    the same values, so all decide alike); the window's mean loss and the dead layers go to
    the health monitor, which raises Unhealthy on a divergence and warns once otherwise."""

    def __init__(self, watch: Watch, model: torch.nn.Module, steps_before: int, device: torch.device) -> None:
        self.health = watch.health or HealthMonitor(num_classes=1)  # one class: only the NaN/inf checks
        self.warn = tqdm.write if watch.show else (lambda line: None)
        self.model, self.d, self.device = model, watch.d, device
        self.steps_before = steps_before  # global steps before this epoch
        self.loss, self.seen = 0.0, 0.0  # the totals at the last window's end

    def close(
        self, step: int, loss_sum: torch.Tensor, correct: torch.Tensor, seen: int, stop: bool
    ) -> tuple[list[float], bool]:
        """The epoch's running totals (loss sum, correct, images) after `step` (0-based),
        over all processes, and whether any process asked to stop."""
        names, zero = gradient_probe(self.model) if self.health.wants_gradients else ([], torch.zeros(0))
        flag = torch.tensor(1.0 if stop else 0.0)
        out = _sync([loss_sum, correct, torch.tensor(float(seen)), flag, zero], self.device, self.d)
        totals = out[:3]
        dead = [n for n, z in zip(names, out[4:]) if z >= self.d.world]
        if totals[2] > self.seen:
            global_step = self.steps_before + step + 1
            events = [
                self.health.window(global_step, (totals[0] - self.loss) / (totals[2] - self.seen)),
                self.health.dead_layers(global_step, dead),
            ]
            self.loss, self.seen = totals[0], totals[2]
            for event in filter(None, events):
                if event.fatal:
                    raise Unhealthy(event)
                self.warn(f"alexnet: warning: {event.message}")
        return totals, out[3] > 0


def _progress(loader: Loader, watch: Watch, total: int) -> tqdm:
    return tqdm(
        loader, desc=watch.desc, leave=False, dynamic_ncols=True, mininterval=1.0, disable=not watch.show, total=total
    )


def _show_progress(bar: tqdm, totals: list[float], lr: float, seconds: float) -> None:
    """The progress bar's running loss, accuracy, lr and images/s (no refresh of its own)."""
    loss, acc, img_s = totals[0] / totals[2], totals[1] / totals[2], totals[2] / seconds
    bar.set_postfix(loss=f"{loss:.4f}", acc=f"{acc:.4f}", lr=f"{lr:.3g}", img_s=f"{img_s:.0f}", refresh=False)


# ----------------------------------------------------------------------------- evaluation


@dataclass
class Classifier:
    """A network as evaluation and prediction run it: the model (in eval mode, on its
    device), evaluation's preprocessing (augment.Preprocess: the mean, the std, the centre
    patch or §4.1's ten) and a precision (runtime.autocast's; a checkpoint's comes from
    runtime.stored_precision)."""

    model: torch.nn.Module
    preprocess: Preprocess
    precision: str  # "off" (fp32), "bf16" or "fp16"

    @property
    def device(self) -> torch.device:
        return self.preprocess.mean.device

    def views(self, images: torch.Tensor, ten_crop: bool = False, mirror: bool = False) -> list[torch.Tensor]:
        """The network's inputs for a uint8 (N, C, H, W) batch: the centre patch; with
        `mirror` its mirror too; with `ten_crop` §4.1's four corners, centre and mirrors."""
        images = images.to(self.device, non_blocking=True)
        return self.preprocess.ten_crop(images) if ten_crop else self.preprocess.views(images, mirror)

    @torch.no_grad()
    def logits(self, inputs: torch.Tensor) -> torch.Tensor:
        """The model's outputs (float32) for preprocessed inputs, in the precision."""
        with autocast(self.device, self.precision):
            return self.model(inputs).float()

    def log_probabilities(self, images: torch.Tensor, ten_crop: bool = False, mirror: bool = False) -> torch.Tensor:
        """The log of the softmax averaged over the views (computed stably), (N, classes)."""
        views = self.views(images, ten_crop, mirror)
        log_probs = torch.stack([torch.log_softmax(self.logits(v), dim=1) for v in views])
        return torch.logsumexp(log_probs, dim=0) - math.log(len(views))

    def probabilities(self, images: torch.Tensor, ten_crop: bool = False, mirror: bool = False) -> torch.Tensor:
        """The softmax averaged over the views of a uint8 batch, (N, classes) float32."""
        return self.log_probabilities(images, ten_crop, mirror).exp()


@dataclass(frozen=True)
class Evaluation:
    """One evaluation pass, over all processes."""

    images: int
    loss: float  # mean negative log-likelihood of the views' mean softmax
    top1: float
    top5: float
    patches: int  # views averaged per image: 1, 2 (mirror) or 10 (§4.1)
    unreadable: int  # files skipped
    seconds: float

    @property
    def top1_error(self) -> float:
        return 1 - self.top1

    @property
    def top5_error(self) -> float:
        return 1 - self.top5

    def to_dict(self) -> dict:
        return {**asdict(self), "top1_error": self.top1_error, "top5_error": self.top5_error}


def evaluate_loader(
    net: Classifier,
    loader: Loader,
    ten_crop: bool = False,
    mirror: bool = False,
    d: Dist = Dist(),
    show: bool = True,
    desc: str = "eval",
) -> Evaluation:
    """Top-1 and top-5 accuracy, mean loss and the number of images of `loader`.

    ten_crop: §4.1's test, the softmax averaged over the four corner and centre patches
    and their mirrors; mirror: over the centre patch and its mirror (the test's mirrors
    without its crops, for data with no margin to crop, such as Fashion-MNIST's); otherwise
    the centre patch alone. Under DDP pass the unwrapped model: processes may hold
    different numbers of batches, so no collective may run per batch.
    """
    net.model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=net.device)  # loss, top-1 and top-5 hits, images
    start = time.perf_counter()
    for images, labels in tqdm(loader, desc=desc, leave=False, dynamic_ncols=True, mininterval=1.0, disable=not show):
        labels = labels.to(net.device, non_blocking=True)
        log_mean = net.log_probabilities(images, ten_crop, mirror)
        sums[0] += F.nll_loss(log_mean, labels, reduction="sum")
        sums[1:3] += topk_hits(log_mean, labels)
        sums[3] += labels.shape[0]
    # each process saw its own images (ShardedBatches: every image once): add them up, in
    # the one host sync of the pass; unreadable files were skipped, and the result says how many
    skipped = torch.tensor([float(len(loader.unreadable))])
    loss_sum, top1, top5, seen, skipped = _sync([sums, skipped], net.device, d)
    n = max(seen, 1)
    patches = 10 if ten_crop else 2 if mirror else 1
    return Evaluation(int(seen), loss_sum / n, top1 / n, top5 / n, patches, int(skipped), time.perf_counter() - start)
