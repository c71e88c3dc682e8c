"""`alexnet train`: a training run as named stages, from a RunConfig (config.py).

    _prepare      the checkpoint to resume from, the data (rundata.py), the model, the
                  machine's decisions (machine.decide_run: the precision, the LRN kernel
                  and a budget's length, a plan.Plan), optimiser and schedule (optim.py),
                  the run directory (rundir.py)
    _run_epoch    one epoch: engine.train_one_epoch, the budget kept to (_keep_to_budget),
                  validation (engine.evaluate_loader), the schedule's per-epoch decision, the
                  metrics row and the checkpoint
    _finish       the final weights, unreadable.txt and summary.json

`train` runs them alone or as one process of a torchrun job (distributed.py).
"""

from __future__ import annotations

import dataclasses
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.parallel import DistributedDataParallel

from ..config import RunConfig, TrainConfig
from ..run import distributed
from ..run.distributed import Dist
from ..run.errors import Stopped, Unhealthy, UserError
from ..run.health import HealthMonitor
from ..run.plan import Plan, format_seconds
from ..run.runtime import check_precision, configure_cuda, grad_scaler, resolve_device, restore_scaler
from .augment import Preprocess
from .checkpoint import load_checkpoint, model_from_checkpoint, save_weights
from .engine import (
    Classifier,
    EpochResult,
    Evaluation,
    Training,
    Watch,
    evaluate_loader,
    train_one_epoch,
)
from .finetune import freeze, init_from, source_config
from .machine import decide_run
from .model import AlexNet, count_parameters
from .optim import Schedule, make_optimizer
from .rundata import RunData, load_data
from .rundir import RunDir

if TYPE_CHECKING:
    from types import FrameType

    from ..run.health import HealthEvent


class _StopSignals:
    """While active, SIGTERM (cluster preemption) and SIGINT (Ctrl-C) only set a flag; the
    training loop finishes its step, saves a checkpoint and raises Stopped."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous = {}

    def __enter__(self) -> _StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = signum

    def __exit__(self, *exc: object) -> bool:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False


@dataclass
class Run:
    """The parts of a training run that its epochs share (built by _prepare)."""

    cfg: RunConfig  # the decisions of `plan` in it (Plan.apply)
    plan: Plan
    d: Dist
    device: torch.device
    dir: RunDir
    data: RunData
    model: AlexNet
    step: Training  # the network as trained, optimiser, scaler, preprocessing, precision, seed
    schedule: Schedule
    health: HealthMonitor
    started: float  # perf_counter at the start: a budget counts from here
    log: Callable
    epoch: int = 0  # the next epoch (0-based)
    first_step: int = 0  # its first batch (after a mid-epoch stop)
    best_top1: float = -1.0
    val: Evaluation | None = None  # the last validation's metrics

    @property
    def steps_per_epoch(self) -> int:
        return len(self.data.train.loader)


def train(cfg: RunConfig) -> dict:
    """Run training as `cfg` says, alone or as one torchrun process; returns the summary
    (status, final validation metrics, paths). Raises Stopped after SIGTERM/SIGINT (a
    checkpoint saved) and UserError for bad input or a run that diverged."""
    d, device_name = distributed.init(cfg.train.device)
    try:
        device = resolve_device(device_name)
        check_precision(cfg.train.amp, device)  # before anything is written
        if device.type == "cuda":
            line = configure_cuda(cfg.train.tf32, cfg.train.deterministic)
            if d.main:
                print(f"alexnet: {line}")
        run = _prepare(cfg, d, device)
        with _StopSignals() as signals:
            while run.epoch < run.cfg.train.epochs:  # re-read: a budget's plan may be revised
                if _run_epoch(run, signals):
                    break
        return _finish(run)
    finally:
        distributed.shutdown()


# ----------------------------------------------------------------------------- preparing


def _prepare(cfg: RunConfig, d: Dist, device: torch.device) -> Run:
    started = time.perf_counter()
    log = print if d.main else (lambda *a, **k: None)
    resume = find_resume(cfg.train.resume, Path(cfg.train.out), log)
    ckpt = load_checkpoint(resume) if resume else None
    if ckpt is not None and "optimizer" not in ckpt:
        raise UserError(f"{resume}: weights only; resuming needs a training checkpoint (last.pt)")
    start = [ckpt["epoch"], ckpt.get("step_in_epoch", 0)] if ckpt is not None else [-1, -1]
    if not distributed.same_everywhere([float(v) for v in start], device, d):  # the first collective
        raise UserError(
            f"--resume {cfg.train.resume}: the processes of this job did not start from the same checkpoint "
            "(on several nodes, --out and the checkpoint must be on a filesystem that all of them see)"
        )
    cfg = _model_config(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, resume=resume)), ckpt)
    source = None
    if ckpt is None and cfg.train.init_from:  # fine-tuning (a resumed fine-tune has its own weights)
        source = load_checkpoint(cfg.train.init_from)
        cfg = source_config(cfg, source)
    data = load_data(cfg, ckpt, d, log, device, source)
    if device.type == "cuda":  # pinned batches, made ahead: the copies overlap the GPU's work
        data.train.loader.pin()
        data.val.loader.pin()
    model, cfg = _build_model(cfg, ckpt, data, device)
    if source is not None:
        log(init_from(model, source, cfg.train, data.classes))
    if cfg.train.freeze != "none":
        freeze(model, cfg.train.freeze)
    preprocess = Preprocess(cfg.data, cfg.model.input_size, device, cfg.train.channels_last, data.mean_image)
    plan = decide_run(cfg, model, ckpt, data.train, data.val, preprocess, device, d, started)
    cfg = dataclasses.replace(cfg, train=plan.apply(cfg.train))
    t = cfg.train
    optimizer = make_optimizer(model, t)
    schedule = Schedule(optimizer, t, len(data.train.loader))
    step = Training(
        _wrap(model, t, d, device),
        optimizer,
        grad_scaler(device, t.amp),
        preprocess,
        device,
        t.amp,
        t.label_smoothing,
        schedule.after_step,
        t.seed,
    )
    health = HealthMonitor(len(data.classes), flat_steps=t.flat_steps, precision=t.amp)
    run = Run(cfg, plan, d, device, RunDir(t.out, d.main), data, model, step, schedule, health, started, log)
    if ckpt is not None:
        _restore(run, ckpt)
    run.dir.start(_record(run), run.epoch)
    _header(run)
    return run


def find_resume(resume: str | None, out: Path, log: Callable[..., None] = print) -> str | None:
    """--resume with no value, or "auto": the run directory's last.pt if there is one, else a
    new run; one command line serves a job's first start and its restarts (a requeued
    SLURM job, torchrun --max-restarts). It says which."""
    if resume != "auto":
        return resume
    if not (out / "last.pt").is_file():
        log(f"alexnet: --resume auto: no {out / 'last.pt'} yet, starting a new run")
        return None
    log(f"alexnet: --resume auto: continuing from {out / 'last.pt'}")
    return str(out / "last.pt")


def _model_config(cfg: RunConfig, ckpt: dict | None) -> RunConfig:
    """A new run: the data decides the input channels (the classes come later); a resumed
    run: the checkpoint's model (the rest of the config may change)."""
    if ckpt is None:
        return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, in_channels=cfg.data.channels))
    cfg = dataclasses.replace(cfg, model=RunConfig.from_dict(ckpt["config"]).model)
    if cfg.model.in_channels != cfg.data.channels:
        raise UserError(
            f"{cfg.train.resume}: a {cfg.model.in_channels}-channel model cannot train on "
            f"{cfg.data.channels}-channel data {cfg.data.name}"
        )
    return cfg


def _build_model(cfg: RunConfig, ckpt: dict | None, data: RunData, device: torch.device) -> tuple[AlexNet, RunConfig]:
    """A new model (the same initial weights on every process), or the checkpoint's."""
    if ckpt is None:
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, num_classes=len(data.classes)))
        torch.manual_seed(cfg.train.seed)
        try:
            model = AlexNet(cfg.model)
        except ValueError as e:  # e.g. an input too small for the variant
            raise UserError(str(e)) from e
    else:
        model = model_from_checkpoint(ckpt, cfg.train.resume)
    memory_format = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
    return model.to(device, memory_format=memory_format), cfg


def _wrap(model: AlexNet, t: TrainConfig, d: Dist, device: torch.device) -> torch.nn.Module:
    """What trains: the model, or its DDP wrapper; compiled if asked."""
    net = model
    if d.enabled:
        # the LRN's band buffers are constants: nothing to broadcast each step; gradients
        # written straight into the all-reduce buckets save a copy of every gradient
        net = DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            broadcast_buffers=False,
            gradient_as_bucket_view=True,
        )
        if t.ddp_bf16:  # halves the all-reduce volume (docs/SCALING.md)
            net.register_comm_hook(None, default_hooks.bf16_compress_hook)
    return torch.compile(net) if t.compile else net


def _restore(run: Run, ckpt: dict) -> None:
    """Continue where the checkpoint stopped: optimiser, schedule, scaler, health, position."""
    run.health.load_state_dict(ckpt.get("health", {}))
    run.step.optimizer.load_state_dict(ckpt["optimizer"])
    restore_scaler(run.step.scaler, ckpt["scaler"])
    run.schedule.resume(ckpt["scheduler"], RunConfig.from_dict(ckpt["config"]).train, run.log)
    run.epoch, run.first_step, run.best_top1 = ckpt["epoch"], ckpt.get("step_in_epoch", 0), ckpt["best_top1"]


def _header(run: Run) -> None:
    cfg, d, t = run.cfg, run.d, run.cfg.train
    run.log(
        f"alexnet: model {cfg.model.name} ({count_parameters(run.model):,} parameters), "
        f"{run.data.train.size:,} training / {run.data.val.size:,} validation images, "
        f"{len(run.data.classes)} classes, device {run.device}"
        f"{f' x {d.world} processes' if d.enabled else ''}, "
        f"{'channels_last, ' if t.channels_last else ''}loader workers {run.data.train.loader.workers}, "
        f"torch threads {torch.get_num_threads()}, schedule {t.schedule}, out {t.out}",
        flush=True,
    )
    for line in run.plan.lines(t, cfg.model.lrn):
        run.log(f"alexnet: {line}", flush=True)
    if t.val_every != 1:
        every = "after the last epoch only" if t.val_every == 0 else f"every {t.val_every} epochs and after the last"
        run.log(f"alexnet: validation {every}", flush=True)
    if t.resume:
        run.log(f"alexnet: resuming {t.resume} at epoch {run.epoch + 1}, batch {run.first_step + 1}", flush=True)


# ----------------------------------------------------------------------------- one epoch


def _run_epoch(run: Run, signals: _StopSignals) -> bool:
    """Train one epoch, keep to the budget, validate, let the schedule decide, record it.
    Returns True when the run is finished before its last epoch (§5's plateau rule)."""
    epoch, epoch_started = run.epoch, time.perf_counter()
    run.data.train.loader.set_epoch(epoch, run.first_step)
    lr_used = run.schedule.start_epoch()
    events_before = len(run.health.events)
    tr = _train_epoch(run, signals)
    run.health.epoch(tr.loss)
    if tr.stopped:  # mid-epoch: save where we are, resume continues with the next batch
        _stop(run, signals, {"epoch": epoch, "step_in_epoch": tr.steps})
    if run.plan.budget is not None:
        _keep_to_budget(run, epoch * run.steps_per_epoch + tr.steps, tr.seconds / max(1, tr.steps - run.first_step))
    run.first_step = 0
    validate = _validates(run.cfg.train, epoch)
    if validate:
        _validate(run, epoch)
    drop = run.schedule.end_epoch(run.val.top1_error if run.val else None)
    if drop:
        run.log(f"alexnet: {drop}")
    row = _metrics_row(
        run, tr, lr_used, validate, time.perf_counter() - epoch_started, run.health.events[events_before:]
    )
    run.log(_epoch_line(run, row, tr, validate), flush=True)
    is_best = validate and run.val.top1 > run.best_top1
    if validate:
        run.best_top1 = max(run.best_top1, run.val.top1)
    run.dir.end_epoch(row, run.model)
    run.epoch = epoch + 1
    finished = run.schedule.finished
    _save(run, {"epoch": epoch + 1, "step_in_epoch": 0, "metrics": row, "finished": finished}, best=is_best)
    if finished:  # §5: three drops, then stop when the error stops improving again
        run.log(f"alexnet: validation error stopped improving after {run.cfg.train.lr_drops} drops: done")
    elif signals.received is not None:  # arrived during validation: the epoch is saved
        _stop(run, signals, None)
    return finished


def _train_epoch(run: Run, signals: _StopSignals) -> EpochResult:
    t, epoch = run.cfg.train, run.epoch
    watch = Watch(
        run.d,
        run.health,
        t.log_every,
        run.d.main,
        lambda: signals.received is not None,
        desc=f"epoch {epoch + 1}/{t.epochs}",
    )
    try:
        last = _last_step(t, epoch, run.steps_per_epoch)
        return train_one_epoch(run.step, run.data.train.loader, epoch, run.first_step, last, watch)
    except Unhealthy as e:
        _diverged(run, e.event.message)


def _validate(run: Run, epoch: int) -> None:
    net = Classifier(run.model, run.step.preprocess, run.cfg.train.amp)  # not DDP's: no collective per batch
    run.val = evaluate_loader(
        net, run.data.val.loader, mirror=run.cfg.train.eval_mirror, d=run.d, show=run.d.main, desc="validate"
    )
    event = run.health.validation(epoch + 1, run.val.loss)
    if event is not None:  # the epoch's weights are not kept
        _diverged(run, event.message)


def _metrics_row(
    run: Run, tr: EpochResult, lr_used: float, validate: bool, seconds: float, events: list[HealthEvent]
) -> dict:
    """metrics.csv's row of the epoch just trained (rundir.METRIC_FIELDS)."""
    val = run.val
    return {
        "epoch": run.epoch + 1,
        "step": run.epoch * run.steps_per_epoch + tr.steps,
        "lr": lr_used,
        "train_loss": tr.loss,
        "train_acc": tr.top1,
        **({"val_loss": val.loss, "val_top1": val.top1, "val_top5": val.top5} if validate else {}),
        "epoch_seconds": seconds,
        "train_images_per_s": tr.images_per_s,
        "health": " ".join(e.kind for e in events),
    }


def _epoch_line(run: Run, row: dict, tr: EpochResult, validate: bool) -> str:
    t, val = run.cfg.train, run.val
    if validate:
        checked = f"val loss {val.loss:.4f} top-1 {val.top1:.4f} top-5 {val.top5:.4f}" + (
            f" ({val.unreadable} unreadable skipped)" if val.unreadable else ""
        )
    else:
        checked = "validation at the end" if t.val_every == 0 else "not validated"
    budget = (
        f", {format_seconds(time.perf_counter() - run.started)} of the {format_seconds(t.budget)} budget"
        if run.plan.budget is not None
        else ""
    )
    return (
        f"epoch {row['epoch']}/{t.epochs}: train loss {tr.loss:.4f} acc {tr.top1:.4f} | {checked} | "
        f"{tr.images_per_s:.0f} img/s, {row['epoch_seconds']:.1f} s{budget}"
    )


def _last_step(t: TrainConfig, epoch: int, steps_per_epoch: int) -> int:
    """Where epoch (0-based) stops: at its end, or earlier in the last epoch of a run of
    `steps` steps (a budget's plan)."""
    if t.steps is None:
        return steps_per_epoch
    return max(0, min(steps_per_epoch, t.steps - epoch * steps_per_epoch))


def _validates(t: TrainConfig, epoch: int) -> bool:
    """Whether epoch (0-based) ends with a validation: every val_every epochs, and the last."""
    last = epoch + 1 == t.epochs
    return last or (t.val_every > 0 and (epoch + 1) % t.val_every == 0)


def _keep_to_budget(run: Run, steps_done: int, step_s: float) -> None:
    """Keep a budgeted run to its budget when the machine's speed drifts (a shared VM ran 15-20%
    slower, or faster, than at the start of a run): the main process revises the plan for the
    steps that fit at the pace of the last epoch (Plan.revise), so that the cosine still ends
    at zero when the budget does. Recorded in the plan and config.json."""
    elapsed = time.perf_counter() - run.started
    new = run.plan.revise(elapsed, steps_done, step_s, run.steps_per_epoch) if run.d.main else None
    new = distributed.broadcast_object(new, run.device, run.d)  # the main process decides
    if new is None:
        return
    planned, budget = new.revised.planned_steps, run.plan.budget
    run.log(
        f"alexnet: {'behind' if new.steps < planned else 'ahead of'} the plan ({step_s * 1000:.0f} ms a step "
        f"against {budget.step_s * 1000:.0f}): {new.steps} steps instead of {planned}, to end with the budget"
    )
    run.plan, run.cfg = new, dataclasses.replace(run.cfg, train=new.apply(run.cfg.train))
    run.schedule.set_length(run.cfg.train)
    run.dir.write_config(_record(run))  # config.json says what the run does


def _record(run: Run) -> dict:
    """config.json's and a checkpoint's record of the run: its config and its plan."""
    return {**run.cfg.to_dict(), "plan": run.plan.to_dict()}


# ----------------------------------------------------------------------------- saving and ending


def _save(run: Run, position: dict, best: bool = False) -> None:
    """A training checkpoint: the config (so that it alone rebuilds the model), the weights,
    optimiser, schedule, scaler and health state, and where in the run it was taken."""
    state = {
        "config": _record(run),
        "classes": run.data.classes,
        "class_names": run.data.class_names or run.data.classes,
        "model": run.model.state_dict(),
        "optimizer": run.step.optimizer.state_dict(),
        "scheduler": run.schedule.state_dict(),
        "scaler": run.step.scaler.state_dict(),
        "best_top1": run.best_top1,
        "health": run.health.state_dict(),
        **position,
    }
    if run.data.mean_image is not None:
        state["mean_image"] = run.data.mean_image.cpu()
    run.dir.save(state, best)


def _stop(run: Run, signals: _StopSignals, position: dict | None) -> None:
    """SIGTERM/SIGINT: save where the run is (position None: the epoch's checkpoint is
    already saved), say so in summary.json, raise Stopped."""
    if position is not None:
        _save(run, position)
    distributed.barrier(run.d)
    _summary(run, "stopped", epochs_done=run.epoch)
    raise Stopped(signals.received or signal.SIGTERM, run.dir.last)


def _diverged(run: Run, message: str) -> None:
    """Stop a diverged run: the last checkpoint (of the last healthy epoch) stays as it is."""
    _summary(run, "diverged")
    kept = f"the last good checkpoint is {run.dir.last}" if run.dir.last.is_file() else "no checkpoint was written"
    raise UserError(f"{message} ({kept})")


def _summary(run: Run, status: str, **fields: Any) -> dict:
    """OUT/summary.json: how the run ended (done, finished with warnings, stopped, diverged),
    what the health checks saw, and the final metrics; strict JSON (jsonio)."""
    summary = {
        "status": status,
        "seconds": time.perf_counter() - run.started,
        **fields,
        "health": [e.to_dict() for e in run.health.events],
    }
    run.dir.write_summary(summary)
    return summary


def _finish(run: Run) -> dict:
    """The final weights, the unreadable files, summary.json; the result for the CLI."""
    run.dir.close()
    unreadable = run.data.all_unreadable()
    listed = run.dir.write_unreadable(unreadable)
    if listed:
        run.log(
            f"alexnet: skipped {len(unreadable)} unreadable training files, listed in {listed}:\n  "
            + "\n  ".join(unreadable[:10])
        )
    if run.d.main:
        save_weights(run.dir.weights, run.model, run.cfg, run.data.classes, run.data.mean_image, run.data.class_names)
    verdict = run.health.final(run.epoch * run.steps_per_epoch, run.val.top1 if run.val else None)
    if verdict is not None:
        run.log(f"alexnet: warning: {verdict.message}")
    warnings = [e for e in run.health.events if not e.fatal]
    t = run.cfg.train
    summary = _summary(
        run,
        "finished with warnings" if warnings else "done",
        val=run.val.to_dict() if run.val else {},
        epochs_done=run.epoch,
        budget=t.budget if run.plan.budget is not None else None,
        checkpoint=str(run.dir.last),
        unreadable=len(unreadable),
    )
    distributed.barrier(run.d)
    return {**summary, "out": str(run.dir.out), "unreadable": unreadable, "warnings": warnings}
