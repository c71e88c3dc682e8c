"""One training epoch (train_one_epoch) and one evaluation pass (evaluate_loader); the
entry points (train.py, evaluate.py) decide what to run."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
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


class _HealthWindows:
    """Feeds the monitor the mean loss of each window of steps between two syncs, and which
    layers' gradients are all zero (every process sees the same all-reduced values, so all
    decide alike); raises Unhealthy on a divergence and hands warnings to `warn`. One sync a
    window: the running totals, the stop flag and the gradient probe go in one all-reduce."""

    def __init__(
        self, health: HealthMonitor, model: torch.nn.Module, warn: Callable[[str], None], steps_before: int
    ) -> None:
        self.health, self.model, self.warn = health, model, warn
        self.steps_before = steps_before  # global steps before this epoch
        self.loss, self.seen = 0.0, 0.0

    def sync(
        self, loss_sum: torch.Tensor, correct_sum: torch.Tensor, seen: int, stop: bool, device: torch.device, d: Dist
    ) -> tuple[list[float], bool, list[str]]:
        """(the epoch's running totals: loss sum, correct, images), whether any process asked
        to stop, and the layers whose gradients are zero on every process."""
        names, zero = gradient_probe(self.model) if self.health.wants_gradients else ([], torch.zeros(0))
        flag = torch.tensor(1.0 if stop else 0.0)
        out = _sync([loss_sum, correct_sum, torch.tensor(float(seen)), flag, zero], device, d)
        dead = [n for n, z in zip(names, out[4:]) if z >= d.world]
        return out[:3], out[3] > 0, dead

    def check(self, step: int, totals: list[float], dead: list[str]) -> None:
        """step: the epoch's 0-based step just done; totals: the epoch's running totals."""
        seen = totals[2] - self.seen
        if seen <= 0:
            return
        global_step = self.steps_before + step + 1
        events = [
            self.health.window(global_step, (totals[0] - self.loss) / seen),
            self.health.dead_layers(global_step, dead),
        ]
        self.loss, self.seen = totals[0], totals[2]
        for event in filter(None, events):
            if event.fatal:
                raise Unhealthy(event)
            self.warn(f"alexnet: warning: {event.message}")


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    images: torch.Tensor,
    labels: torch.Tensor,
    amp: str,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One SGD step on a preprocessed batch; returns the loss and the logits (not synced)."""
    with autocast(images.device, amp):
        logits = model(images)
        loss = F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss, logits


@dataclass
class Stepper:
    """What a training step needs, built once per run."""

    net: torch.nn.Module  # the model as trained: itself, or its DDP / compiled wrapper
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    preprocess: Preprocess  # augment.Preprocess: uint8 batch on the device -> input
    device: torch.device
    amp: str = "off"
    label_smoothing: float = 0.0
    after_step: Callable[[], None] = lambda: None  # a per-step schedule (optim.Schedule)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """One step on a uint8 batch; returns the loss, the logits and the labels on the device."""
        images = self.preprocess(images.to(self.device, non_blocking=True), train=True)
        labels = labels.to(self.device, non_blocking=True)
        loss, logits = train_step(self.net, self.optimizer, self.scaler, images, labels, self.amp, self.label_smoothing)
        self.after_step()
        return loss, logits, labels


@dataclass(frozen=True)
class Span:
    """Which batches of which epoch to train: from `first` (a mid-epoch resume) up to `last`
    (None: the end; earlier in the last epoch of a run of a given number of steps)."""

    epoch: int = 0
    first: int = 0
    last: int | None = None
    seed: int = 0  # with epoch, step and rank: every step's randomness


@dataclass
class Watch:
    """How an epoch reports and checks itself: progress bar, health checks, stop requests."""

    d: Dist = field(default_factory=Dist)
    health: HealthMonitor | None = None  # None: the NaN/inf checks only
    log_every: int = 20
    show: bool = True
    should_stop: Callable[[], bool] = lambda: False
    desc: str = "train"


def train_one_epoch(step: Stepper, loader: Loader, span: Span = Span(), watch: Watch = Watch()) -> dict:
    """Train on `loader`'s batches of `span`; returns loss, accuracy and images/s over all
    processes, and `steps`, the index of the next batch; `stopped` when should_stop()
    became true on any process, after a whole step.

    Every log_every steps and at the end, the window's mean loss and the gradients go to
    the health monitor (health.py), on all processes at once: a divergence raises
    Unhealthy, a warning is printed once.
    """
    d, device = watch.d, step.device
    health = watch.health or HealthMonitor(num_classes=1)  # one class: only the NaN/inf checks
    warn = tqdm.write if watch.show else (lambda line: None)
    windows = _HealthWindows(health, getattr(step.net, "module", step.net), warn, span.epoch * len(loader))
    step.net.train()
    start = time.perf_counter()
    last_step = len(loader) if span.last is None else min(span.last, len(loader))
    bar = tqdm(
        loader,
        desc=watch.desc,
        leave=False,
        dynamic_ncols=True,
        mininterval=1.0,
        disable=not watch.show,
        total=last_step - span.first,
    )
    loss_sum = torch.zeros((), device=device)
    correct_sum = torch.zeros((), device=device)
    seen, i, stopped = 0, span.first, False
    for i, (images, labels) in enumerate(bar, start=span.first):
        torch.manual_seed(step_seed(span.seed, span.epoch, i, d.rank))
        loss, logits, labels = step(images, labels)
        n = labels.shape[0]
        loss_sum += loss.detach() * n
        correct_sum += (logits.detach().argmax(1) == labels).sum()
        seen += n
        last = i + 1 >= last_step
        if (i + 1) % watch.log_every == 0 and not last:
            # one host sync (and one small all-reduce under DDP) every log_every steps: the
            # totals, the gradient probe and the stop flag of every process together
            totals, stop, dead = windows.sync(loss_sum, correct_sum, seen, watch.should_stop(), device, d)
            windows.check(i, totals, dead)
            _show_progress(bar, totals, step.optimizer.param_groups[0]["lr"], time.perf_counter() - start)
            if stop:
                stopped = True
                break
        if last:
            break
        if not d.enabled and watch.should_stop():  # alone, a stop request costs no sync: at once
            stopped = True
            break
    bar.close()
    totals, _, dead = windows.sync(loss_sum, correct_sum, seen, False, device, d)
    windows.check(i, totals, dead)
    elapsed = time.perf_counter() - start
    images = max(totals[2], 1.0)
    return {
        "loss": totals[0] / images,
        "acc": totals[1] / images,
        "images": int(totals[2]),
        "seconds": elapsed,
        "images_per_s": totals[2] / elapsed,
        "steps": i + 1,
        "stopped": stopped,
    }


def _show_progress(bar: tqdm, totals: list[float], lr: float, seconds: float) -> None:
    """The progress bar's running loss, accuracy, lr and images/s (no refresh of its own)."""
    loss, acc, img_s = totals[0] / totals[2], totals[1] / totals[2], totals[2] / seconds
    bar.set_postfix(loss=f"{loss:.4f}", acc=f"{acc:.4f}", lr=f"{lr:.3g}", img_s=f"{img_s:.0f}", refresh=False)


@torch.no_grad()
def evaluate_loader(
    model: torch.nn.Module,
    loader: Loader,
    preprocess: Preprocess,
    device: torch.device,
    amp: str = "off",
    desc: str = "eval",
    ten_crop: bool = False,
    mirror: bool = False,
    d: Dist = Dist(),
    show: bool = True,
) -> dict:
    """Top-1 and top-5 accuracy and error, mean loss, and the number of images.

    ten_crop: §4.1's test, the softmax averaged over the four corner and centre patches
    and their mirrors; mirror: over the centre patch and its mirror (the test's mirrors
    without its crops, for data with no margin to crop, such as Fashion-MNIST's); otherwise
    the centre patch alone. Under DDP pass the unwrapped
    model: processes may hold different numbers of batches, so no collective may run
    per batch.
    """
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, top-1 and top-5 hits, images
    start = time.perf_counter()
    for images, labels in tqdm(loader, desc=desc, leave=False, dynamic_ncols=True, mininterval=1.0, disable=not show):
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        views = preprocess.ten_crop(images) if ten_crop else preprocess.views(images, mirror)
        log_probs = []
        for view in views:
            with autocast(device, amp):
                log_probs.append(torch.log_softmax(model(view).float(), dim=1))
        # log of the mean softmax over the views, computed stably
        log_mean = torch.logsumexp(torch.stack(log_probs), dim=0) - math.log(len(views))
        sums[0] += F.nll_loss(log_mean, labels, reduction="sum")
        sums[1:3] += topk_hits(log_mean, labels)
        sums[3] += labels.shape[0]
    # each process saw its own images (ShardedBatches: every image once): add them up, in
    # the one host sync of the pass; unreadable files were skipped, and the result says how many
    skipped = torch.tensor([float(len(loader.unreadable))])
    loss_sum, top1, top5, seen, skipped = _sync([sums, skipped], device, d)
    n = max(seen, 1)
    return {
        "images": int(seen),
        "loss": loss_sum / n,
        "top1": top1 / n,
        "top5": top5 / n,
        "top1_error": 1 - top1 / n,
        "top5_error": 1 - top5 / n,
        "patches": 10 if ten_crop else 2 if mirror else 1,
        "unreadable": int(skipped),
        "seconds": time.perf_counter() - start,
    }
