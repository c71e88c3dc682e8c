"""The machine's measurements for a run's decisions (run/plan.py decides): training steps
of each precision, a validation pass, the loader, and the LRN kernel's check and timing;
kept in the cache between runs (run/measurements.py) unless --remeasure.

`decide_run` gives a training run its Plan: the main process measures (on copies of the
model, with one real batch, so the run's weights and random streams are untouched) and
decides, or reads its checkpoint's plan, and broadcasts it to the other processes.
`select_lrn` is how every entry point (train, evaluate, predict, serve, features, export)
chooses the LRN kernel once, explicitly: nothing is built or timed inside a forward.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from ..config import RunConfig
from ..run import distributed, measurements, native
from ..run.distributed import Dist
from ..run.plan import LrnChoice, Plan, Probes, decide, resumed, time_steps, training_step_timer
from ..run.runtime import autocast
from .engine import train_step
from .lrn import select_kernel
from .optim import make_optimizer

if TYPE_CHECKING:
    from ..data.loaders import Loader, Split
    from .augment import Preprocess
    from .model import AlexNet


def lrn_choice(asked: str, device: torch.device, has_lrn: bool, remeasure: bool = False) -> LrnChoice:
    """The LRN kernel for `device` (lrn.select_kernel); "auto"'s check and timing come from
    the cache when this machine has made them before."""
    if not has_lrn:
        return LrnChoice("torch", "the model has no LRN")
    if device.type != "cpu":
        return LrnChoice("torch", f"torch operations on {device.type}: the fused kernel is for the CPU")
    if asked != "auto":
        return LrnChoice(*select_kernel(asked))
    # the build (cached on disk by native.py) is part of the key: another compiler, another check
    k = measurements.key(device=measurements.device_model(device), kernel=native.kernel_status(), lrn_c=_source())
    (kernel, reason), when = measurements.measured("lrn_kernel", k, lambda: list(select_kernel("auto")), remeasure)
    return LrnChoice(kernel, reason + (f"; measured {when}, cached" if when else ""))


def _source() -> str:
    """A hash of lrn.c: a changed kernel is checked and timed again."""
    return hashlib.sha256(native.SOURCE.read_bytes()).hexdigest()[:16]


def select_lrn(
    model: AlexNet, device: torch.device, asked: str = "auto", log: Callable[[str], None] | None = None
) -> LrnChoice:
    """An entry point's one choice of the LRN kernel for `model` on `device`, set on the
    model and said in one line to `log`."""
    choice = lrn_choice(asked, device, model.lrn_kernel is not None)
    model.set_lrn_kernel(choice.kernel)
    if log is not None and model.lrn_kernel is not None:
        log(f"alexnet: LRN {choice.describe()}")
    return choice


def decide_run(
    cfg: RunConfig,
    model: AlexNet,
    ckpt: dict | None,
    train: Split,
    val: Split,
    preprocess: Preprocess,
    device: torch.device,
    d: Dist,
    started: float,
) -> Plan:
    """The run's plan (plan.decide, or plan.resumed for a checkpoint's run), made by the main
    process and broadcast; every process sets its model's LRN kernel from it."""
    plan = None
    if d.main:
        probes = _probes(cfg, model, train, val, preprocess, device)
        if ckpt is None:
            plan = decide(cfg.train, device, probes, lambda: time.perf_counter() - started, len(train.loader))
        else:
            was = RunConfig.from_dict(ckpt["config"]).train
            plan = resumed(Plan.from_dict(ckpt["config"].get("plan"), was), was, cfg.train, device, probes)
        plan = dataclasses.replace(plan, measured=probes.cached[0] if probes.cached else "")
    plan = distributed.broadcast_object(plan, device, d)
    model.set_lrn_kernel(plan.lrn.kernel)
    return plan


@dataclasses.dataclass(frozen=True)
class _CachedProbes(Probes):
    cached: list[str] = dataclasses.field(default_factory=list)  # when cached measurements were taken


def _probes(
    cfg: RunConfig, model: AlexNet, train: Split, val: Split, preprocess: Preprocess, device: torch.device
) -> _CachedProbes:
    """plan.Probes for this run, answered from the cache where this machine has measured the
    same model, batch and settings before (run/measurements.py)."""
    t, cached = cfg.train, []
    base = {
        "device": measurements.device_model(device),
        "model": cfg.model.to_dict(),
        "batch": t.batch_size,
        "channels_last": t.channels_last,
        "compile": t.compile,
        "data": {k: v for k, v in cfg.data.to_dict().items() if not k.startswith("limit")},
    }

    def recalled(what: str, fields: dict, measure: Callable[[], object]) -> object:
        value, when = measurements.measured(what, measurements.key(**base, **fields), measure, t.remeasure)
        if when:
            cached.append(when)
        return value

    def lrn(asked: str) -> LrnChoice:
        choice = lrn_choice(asked, device, model.lrn_kernel is not None, t.remeasure)
        model.set_lrn_kernel(choice.kernel)  # before any step is timed: the replicas copy it
        return choice

    def step_seconds(candidates: list[str]) -> dict[str, float]:
        fields = {"candidates": candidates, "lrn": model.lrn_kernel, "smoothing": t.label_smoothing}
        return recalled("step_seconds", fields, lambda: _step_timer(cfg, model, train, preprocess, device)(candidates))

    def validation_seconds(amp: str) -> float:
        fields = {"amp": amp, "mirror": t.eval_mirror, "lrn": model.lrn_kernel}
        per_batch = recalled(
            "validation_batch_seconds",
            fields,
            lambda: _validation_batch_seconds(model, val, preprocess, device, amp, t.eval_mirror),
        )
        return per_batch * len(val.loader)

    return _CachedProbes(step_seconds, validation_seconds, lambda: loader_seconds(train.loader), lrn, cached)


def _step_timer(
    cfg: RunConfig, model: AlexNet, train: Split, preprocess: Preprocess, device: torch.device
) -> Callable[[list[str]], dict[str, float]]:
    """Real training steps (one batch of the training data, preprocessed as in training) of
    each candidate precision, on copies of the model (plan.training_step_timer)."""
    t = cfg.train
    images, labels = next(iter(train.loader))
    images, labels = images.to(device), labels.to(device)

    def step(replica, optimizer, scaler, x, y, amp) -> None:  # noqa: ANN001
        train_step(replica, optimizer, scaler, preprocess(x, train=True), y, amp, t.label_smoothing)

    return training_step_timer(model, lambda m: make_optimizer(m, t), step, (images, labels), device)


LOADER_BATCHES = 6  # batches timed after the workers' first (and their prefetched ones)


def loader_seconds(loader: Loader) -> float | None:
    """Seconds a batch of a loader that works per batch in worker processes (decoding
    files or a JPEG store) delivers, in steady state; None for in-memory data, whose gather
    is part of the step. The workers' first batches (start-up, and what they prefetch while
    it lasts) are not counted. Not cached: it depends on the data and its disk."""
    if loader.workers == 0:
        return None
    loader.set_epoch(0)
    it = iter(loader)
    warm = 2 * loader.workers + 1  # DataLoader's default prefetch: 2 batches a worker
    if len(loader) <= warm + 1:
        return None
    for _ in range(warm):
        next(it)
    n = min(LOADER_BATCHES, len(loader) - warm)
    started = time.perf_counter()
    for _ in range(n):
        next(it)
    del it
    return (time.perf_counter() - started) / n


def _validation_batch_seconds(
    model: torch.nn.Module, val_split: Split, preprocess: Preprocess, device: torch.device, amp: str, mirror: bool
) -> float:
    """Seconds of one validation batch, timed on a batch of the validation data."""
    images, _ = next(iter(val_split.loader))
    images = images.to(device)
    was_training = model.training
    model.eval()

    def forward() -> None:
        with torch.no_grad(), autocast(device, amp):
            for view in preprocess.views(images, mirror):
                model(view)

    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    try:
        return time_steps({"eval": forward}, sync=sync)["eval"]  # on CUDA: the kernels, not their launch
    finally:
        model.train(was_training)
