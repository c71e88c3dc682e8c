"""`alexnet train`: build data, model and optimiser from a RunConfig and run the epochs."""

from __future__ import annotations

import csv
import dataclasses
import itertools
import math
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.parallel import DistributedDataParallel

from . import distributed

from .augment import Preprocess
from .checkpoint import (load_checkpoint, model_from_checkpoint, save_checkpoint,
                         save_weights)
from .config import RunConfig, TrainConfig
from .data import is_fashion_mnist, load_split
from .engine import (AMP_DTYPES, Unhealthy, autocast, evaluate, grad_scaler, resolve_device, train_one_epoch,
                     train_step)
from .errors import UserError
from .health import HealthMonitor
from .imagenet import human_names
from .jsonio import write_json
from .model import AlexNet, count_parameters
from .plan import (PRECISION_NAMES, BudgetPlan, Precision, choose_precision, format_seconds,
                   plan_budget, revised_steps, time_steps, training_step_timer)
from .stats import cached_mean_image
from .tblog import TensorBoard

AMP_ORDER = tuple(AMP_DTYPES)  # the precisions as numbers, for the one all-reduce of _decide
METRIC_FIELDS = ("epoch", "step", "lr", "train_loss", "train_acc", "val_loss", "val_top1",
                 "val_top5", "epoch_seconds", "train_images_per_s", "health")


@dataclass
class LrSchedule:
    """Learning-rate multiplier per optimiser step (a LambdaLR function with plain state).

    step:     /10 every `step_epochs` epochs: the Caffe/torchvision alternative to §5's
              plateau rule (`make_scheduler`), for runs of a fixed length.
    onecycle: linear warm-up, then a cosine from 1 to 0 over the remaining steps: gets
              the most out of a short, fixed budget, such as the Fashion-MNIST preset.
    """
    kind: str
    epochs: int
    steps_per_epoch: int
    step_epochs: int
    warmup_epochs: float
    total_steps: int | None = None  # the run's length in steps (None: epochs x steps_per_epoch)

    def step_factor(self, step: int) -> float:
        return 0.1 ** (step // (self.step_epochs * self.steps_per_epoch))

    def onecycle_factor(self, step: int) -> float:
        warm = self.warmup_epochs * self.steps_per_epoch
        if step < warm:
            return (step + 1) / warm
        total = self.total_steps or self.epochs * self.steps_per_epoch
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1.0, total - warm))))

    def __call__(self, step: int) -> float:
        return {"step": self.step_factor, "onecycle": self.onecycle_factor}[self.kind](step)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int):
    """plateau (§5): lr / 10 when the validation error has not improved by `plateau_threshold`
    for more than `plateau_patience` epochs (the paper gives no numbers: ours), stepped
    once per epoch with the error. step / onecycle: a LambdaLR stepped every batch."""
    if cfg.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=0.1, patience=cfg.plateau_patience,
            threshold=cfg.plateau_threshold, threshold_mode="abs", eps=0.0)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, LrSchedule(cfg.schedule, cfg.epochs, steps_per_epoch, cfg.step_epochs, cfg.warmup_epochs,
                              cfg.steps))


def lr_drops(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> int:
    """How many times the learning rate has been divided by 10 so far."""
    return round(math.log10(cfg.lr / optimizer.param_groups[0]["lr"]))


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.SGD:
    # §5 writes the update as  v <- 0.9 v - 0.0005 lr w - lr grad;  w <- w + v.
    # PyTorch's SGD keeps b <- 0.9 b + (grad + 0.0005 w);  w <- w - lr b, i.e. b = -v / lr.
    # The two are the same while lr is constant. After a drop from lr0 to lr1 the paper's
    # velocity v still moves the weights by the old lr0's steps, decaying by 0.9 a step;
    # PyTorch's b is in gradient units, so the step shrinks to lr1's at once.
    # momentum_rule "paper" (the default) keeps the paper's: see paper_momentum_at_drop.
    # fused: the whole update in one kernel (CPU and CUDA), the same numbers as foreach;
    # 12 against 83 ms a step for the paper model's 61 M parameters on a 2-core CPU.
    fused = next(model.parameters()).device.type in ("cpu", "cuda")
    return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                           weight_decay=cfg.weight_decay, foreach=None if fused else True, fused=fused or None)


def paper_momentum_at_drop(optimizer: torch.optim.SGD, old_lr: float, new_lr: float) -> None:
    """Make PyTorch's SGD follow §5's rule across a drop: b = -v / lr, so b *= old / new."""
    for state in optimizer.state.values():
        if state.get("momentum_buffer") is not None:
            state["momentum_buffer"].mul_(old_lr / new_lr)


class Stopped(Exception):
    """SIGTERM or SIGINT arrived: a checkpoint was saved and the run ended cleanly."""

    def __init__(self, signum: int, checkpoint: Path):
        self.signum, self.checkpoint = signum, checkpoint
        super().__init__(f"stopped by {signal.Signals(signum).name}; checkpoint {checkpoint} "
                         f"(continue with --resume {checkpoint})")


class _StopSignals:
    """While active, SIGTERM (cluster preemption) and SIGINT (Ctrl-C) only set a flag; the
    training loop finishes its step, saves a checkpoint and raises Stopped."""

    def __init__(self):
        self.received: int | None = None
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.received = signum

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False


def _append_metrics(path: Path, row: dict) -> None:
    new = not path.exists()
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=METRIC_FIELDS)
        if new:
            writer.writeheader()
        writer.writerow({k: row.get(k, "") for k in METRIC_FIELDS})  # blank: not validated


def _start_run_dir(out: Path, cfg: RunConfig, done_epochs: int) -> None:
    """config.json (atomically); metrics.csv keeps only the rows of the epochs the run
    resumes after (a kill between a row and its checkpoint would repeat the epoch), and a
    fresh run starts a new one; temporary files of writes a kill interrupted are removed."""
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", cfg.to_dict())
    for stale in out.glob(".*.tmp"):
        stale.unlink(missing_ok=True)
    metrics = out / "metrics.csv"
    rows = []
    if done_epochs and metrics.is_file():
        with open(metrics, newline="") as f:
            rows = [r for r in csv.DictReader(f) if int(r["epoch"]) <= done_epochs]
    metrics.unlink(missing_ok=True)
    for row in rows:
        _append_metrics(metrics, row)


def find_resume(resume: str | None, out: Path) -> str | None:
    """--resume with no value means the run directory's last.pt."""
    if resume != "auto":
        return resume
    if not (out / "last.pt").is_file():
        raise UserError(f"{out}: no last.pt to resume from")
    return str(out / "last.pt")


def _model_config(cfg: RunConfig, ckpt: dict | None, resume: str | None) -> RunConfig:
    if ckpt is None:  # the data decides the input channels; the class count comes later
        return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, in_channels=cfg.data.channels))
    cfg = dataclasses.replace(cfg, model=RunConfig.from_dict(ckpt["config"]).model)  # the rest may change
    if cfg.model.in_channels != cfg.data.channels:
        raise UserError(f"{resume}: a {cfg.model.in_channels}-channel model cannot train on "
                        f"{cfg.data.channels}-channel data {cfg.data.name}")
    return cfg


def train(cfg: RunConfig, resume: str | None = None, limit_train: int | None = None,
          limit_val: int | None = None, strict: bool = False, ddp_bf16: bool = False) -> dict:
    """Run training as `cfg` says, alone or as one torchrun process; returns the final
    validation metrics and paths. Raises Stopped after SIGTERM/SIGINT (checkpoint saved)."""
    d, device_name = distributed.init(cfg.train.device)
    try:
        return _train(cfg, d, resolve_device(device_name), resume, limit_train, limit_val, strict, ddp_bf16)
    finally:
        distributed.shutdown()


def _train(cfg, d, device, resume, limit_train, limit_val, strict, ddp_bf16) -> dict:
    started = time.perf_counter()  # a budget counts from here
    out = Path(cfg.train.out)
    log = print if d.main else (lambda *a, **k: None)
    resume = find_resume(resume, out)
    ckpt = load_checkpoint(resume) if resume else None
    if ckpt is not None and "optimizer" not in ckpt:
        raise UserError(f"{resume}: weights only; resuming needs a training checkpoint (last.pt)")
    cfg = _model_config(cfg, ckpt, resume)
    t = cfg.train
    train_split = load_split(True, cfg.data, t.batch_size, t.seed, limit_train, d=d, strict=strict)
    val_split = load_split(False, cfg.data, t.batch_size, t.seed, limit_val, d=d)
    classes = train_split.classes
    if classes != val_split.classes:
        raise UserError(f"{cfg.data.name}: the training and validation classes differ")
    class_names = None if is_fashion_mnist(cfg.data) else human_names(classes, Path(cfg.data.name),
                                                                       cfg.data.synsets)
    if ckpt is None:
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, num_classes=len(classes)))
        torch.manual_seed(t.seed)  # the same initial weights on every process
        try:
            model = AlexNet(cfg.model)
        except ValueError as e:  # e.g. an input too small for the variant
            raise UserError(str(e)) from e
    else:
        if list(ckpt["classes"]) != classes:
            raise UserError(f"{resume}: trained on other classes than {cfg.data.name}")
        model = model_from_checkpoint(ckpt, resume)
    memory_format = torch.channels_last if t.channels_last else torch.contiguous_format
    model = model.to(device, memory_format=memory_format)
    mean_image, unreadable = _mean_image(cfg, ckpt, d, out, t, limit_train, log)
    preprocess = Preprocess(cfg.data, cfg.model.input_size, device, t.channels_last, mean_image)

    # what this machine decides: the precision, and the epochs of a time budget (plan.py)
    cfg = _decide(cfg, model, ckpt, train_split, val_split, preprocess, device, d, started, log)
    t = cfg.train
    net = model  # what trains: the model, or its DDP wrapper
    if d.enabled:
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        if ddp_bf16:  # halves the all-reduce volume (docs/SCALING.md)
            net.register_comm_hook(None, default_hooks.bf16_compress_hook)
    if t.compile:
        net = torch.compile(net)

    optimizer = make_optimizer(model, t)
    scheduler = make_scheduler(optimizer, t, len(train_split.loader))
    per_step = None if t.schedule == "plateau" else scheduler
    scaler = grad_scaler(device, t.amp)
    start_epoch, first_step, best_top1 = 0, 0, -1.0
    health = HealthMonitor(len(classes), flat_steps=t.flat_steps)
    if ckpt is not None:
        health.load_state_dict(ckpt.get("health", {}))
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        start_epoch, first_step, best_top1 = ckpt["epoch"], ckpt.get("step_in_epoch", 0), ckpt["best_top1"]
        _apply_new_lr(optimizer, scheduler, ckpt["config"]["train"]["lr"], t.lr, log)

    if d.main:
        _start_run_dir(out, cfg, start_epoch)
    m = cfg.model
    log(f"alexnet: model {m.name} ({count_parameters(model):,} parameters), "
        f"{train_split.size:,} training / {val_split.size:,} validation images, "
        f"{len(classes)} classes, device {device}{f' x {d.world} processes' if d.enabled else ''}, "
        f"{'channels_last, ' if t.channels_last else ''}loader workers {train_split.workers}, "
        f"torch threads {torch.get_num_threads()}, schedule {t.schedule}, out {out}", flush=True)
    for line in _plan_lines(cfg):
        log(f"alexnet: {line}", flush=True)
    if ckpt is not None:
        log(f"alexnet: resuming {resume} at epoch {start_epoch + 1}, batch {first_step + 1}", flush=True)

    def checkpoint(state_extra: dict, best: bool = False) -> None:
        if not d.main:
            return
        state = {"config": cfg.to_dict(), "classes": classes, "class_names": class_names or classes,
                 "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                 "best_top1": best_top1, "health": health.state_dict(), **state_extra}
        if mean_image is not None:
            state["mean_image"] = mean_image.cpu()
        save_checkpoint(out / "last.pt", state)
        if best:
            save_checkpoint(out / "best.pt", state)

    val, epochs_done = {}, start_epoch
    board = TensorBoard(out, enabled=d.main)
    with _StopSignals() as signals:
        for epoch in itertools.count(start_epoch):
            if epoch >= t.epochs:  # re-read every epoch: a budget's plan may be revised (_keep_to_budget)
                break
            train_split.loader.set_epoch(epoch, first_step)
            epoch_started = time.perf_counter()
            lr_used = optimizer.param_groups[0]["lr"]
            events_before = len(health.events)
            try:
                tr = train_one_epoch(net, train_split.loader, optimizer, per_step, scaler, preprocess,
                                     device, t.amp, t.label_smoothing, desc=f"epoch {epoch + 1}/{t.epochs}",
                                     log_every=t.log_every, seed=t.seed, epoch=epoch, first_step=first_step,
                                     d=d, should_stop=lambda: signals.received is not None, show=d.main,
                                     health=health, last_step=_last_step(t, epoch, len(train_split.loader)))
            except Unhealthy as e:
                _diverged(e.event.message, out, d, health, started)
            if cfg.plan.get("budget") and not tr["stopped"]:  # still within the budget at this pace?
                cfg = _keep_to_budget(cfg, epoch * len(train_split.loader) + tr["steps"],
                                      tr["seconds"] / max(1, tr["steps"] - first_step), started,
                                      scheduler, len(train_split.loader), d, device, log, out)
                t = cfg.train
            first_step = 0
            if tr["stopped"]:  # mid-epoch: save where we are, resume continues with the next batch
                checkpoint({"epoch": epoch, "step_in_epoch": tr["steps"]})
                distributed.barrier(d)
                _write_summary(out, d, "stopped", health, started, epochs_done=epoch)
                raise Stopped(signals.received or signal.SIGTERM, out / "last.pt")
            validate = _validates(t, epoch)
            if validate:
                val = evaluate(model, val_split.loader, preprocess, device, t.amp, desc="validate",
                               mirror=t.eval_mirror, d=d, show=d.main)
                event = health.validation(epoch + 1, val["loss"])
                if event is not None:  # the epoch's weights are not kept
                    _diverged(event.message, out, d, health, started)
            if per_step is None:
                scheduler.step(val["top1_error"])
            new_lr = optimizer.param_groups[0]["lr"]
            if new_lr < lr_used and t.schedule != "onecycle":
                log(f"alexnet: learning rate {lr_used:.3g} -> {new_lr:.3g} (drop {lr_drops(optimizer, t)})")
                if t.momentum_rule == "paper":
                    paper_momentum_at_drop(optimizer, lr_used, new_lr)
            finished = t.schedule == "plateau" and lr_drops(optimizer, t) > t.lr_drops
            row = {"epoch": epoch + 1, "step": epoch * len(train_split.loader) + tr["steps"], "lr": lr_used,
                   "train_loss": tr["loss"], "train_acc": tr["acc"],
                   **({"val_loss": val["loss"], "val_top1": val["top1"], "val_top5": val["top5"]}
                      if validate else {}),
                   "epoch_seconds": time.perf_counter() - epoch_started,
                   "train_images_per_s": tr["images_per_s"],
                   "health": " ".join(e.kind for e in health.events[events_before:])}
            log(f"epoch {epoch + 1}/{t.epochs}: train loss {tr['loss']:.4f} acc {tr['acc']:.4f} | "
                + (f"val loss {val['loss']:.4f} top-1 {val['top1']:.4f} top-5 {val['top5']:.4f}"
                   + (f" ({val['unreadable']} unreadable skipped)" if val["unreadable"] else "")
                   if validate else "validation at the end" if t.val_every == 0 else "not validated")
                + f" | {tr['images_per_s']:.0f} img/s, {row['epoch_seconds']:.1f} s"
                + (f", {format_seconds(time.perf_counter() - started)} of the "
                   f"{format_seconds(t.budget)} budget" if cfg.plan.get("budget") else ""), flush=True)
            is_best = validate and val["top1"] > best_top1
            if validate:
                best_top1 = max(best_top1, val["top1"])
            if d.main:
                _append_metrics(out / "metrics.csv", row)
                board.epoch(row, model)
            checkpoint({"epoch": epoch + 1, "step_in_epoch": 0, "metrics": row, "finished": finished},
                       best=is_best)
            epochs_done = epoch + 1
            if finished:  # §5: three drops, then stop when the error stops improving again
                log(f"alexnet: validation error stopped improving after {t.lr_drops} drops: done")
                break
            if signals.received is not None:  # arrived during validation: the epoch is saved
                distributed.barrier(d)
                _write_summary(out, d, "stopped", health, started, epochs_done=epoch + 1)
                raise Stopped(signals.received, out / "last.pt")
    board.close()
    unreadable += [f for f in getattr(train_split.loader, "unreadable", []) if f not in unreadable]
    if unreadable and d.main:
        (out / "unreadable.txt").write_text("\n".join(unreadable) + "\n")
        log(f"alexnet: skipped {len(unreadable)} unreadable training files, listed in "
            f"{out / 'unreadable.txt'}:\n  " + "\n  ".join(unreadable[:10]))
    if d.main:
        save_weights(out / "model.safetensors", model, cfg, classes, mean_image, class_names)
    warnings = [e for e in health.events if not e.fatal]
    status = "finished with warnings" if warnings else "done"
    summary = _write_summary(out, d, status, health, started, val=val, epochs_done=epochs_done,
                             budget=t.budget if cfg.plan.get("budget") else None,
                             checkpoint=str(out / "last.pt"), unreadable=len(unreadable))
    distributed.barrier(d)
    return {**summary, "out": str(out), "unreadable": unreadable, "warnings": warnings}


def _write_summary(out: Path, d, status: str, health: HealthMonitor, started: float, **fields) -> dict:
    """OUT/summary.json: how the run ended (done, finished with warnings, stopped, diverged),
    what the health checks saw, and the final metrics; strict JSON (jsonio)."""
    summary = {"status": status, "seconds": time.perf_counter() - started, **fields,
               "health": [e.to_dict() for e in health.events]}
    if d.main:
        write_json(out / "summary.json", summary)
    return summary


def _diverged(message: str, out: Path, d, health: HealthMonitor, started: float) -> None:
    """Stop a diverged run: the last checkpoint (of the last healthy epoch) stays as it is."""
    _write_summary(out, d, "diverged", health, started)
    kept = (f"the last good checkpoint is {out / 'last.pt'}" if (out / "last.pt").is_file()
            else "no checkpoint was written")
    raise UserError(f"{message} ({kept})")


def _keep_to_budget(cfg: RunConfig, steps_done: int, step_s: float, started: float, scheduler,
                    steps_per_epoch: int, d, device, log, out: Path) -> RunConfig:
    """Keep a budgeted run to its budget when the machine's speed drifts (a shared VM ran 15-20%
    slower, or faster, than at the start of a run): the schedule is rebuilt for the steps that
    fit at the pace of the last epoch, so that the cosine still ends at zero when the budget
    does. Recorded in the plan and config.json."""
    t, budget = cfg.train, cfg.plan["budget"]
    planned = t.steps or t.epochs * steps_per_epoch
    new = revised_steps(budget["budget_s"], time.perf_counter() - started, steps_done, step_s, planned,
                        budget["validation_s"], most=budget["max_epochs"] * steps_per_epoch) if d.main else None
    new = int(distributed.all_sum([float(new or 0)], device, d)[0]) or None  # the main process decides
    if new is None:
        return cfg
    if isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
        scheduler.lr_lambdas[0].total_steps = new
    log(f"alexnet: {'behind' if new < planned else 'ahead of'} the plan ({step_s * 1000:.0f} ms a step "
        f"against {budget['step_s'] * 1000:.0f}): {new} steps instead of {planned}, to end with the budget")
    plan = {**cfg.plan, "revised": {"steps": new, "planned_steps": planned, "at_step": steps_done,
                                    "step_s": step_s}}
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(t, steps=new, epochs=-(-new // steps_per_epoch)),
                              plan=plan)
    if d.main:  # config.json says what the run does
        write_json(out / "config.json", cfg.to_dict())
    return cfg


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


def _decide(cfg: RunConfig, model, ckpt, train_split, val_split, preprocess, device, d, started,
            log) -> RunConfig:
    """The run's precision (--amp auto) and, for a budget, its epochs: measured here on copies
    of the model (plan.py), decided by the main process for all. A resumed run keeps the
    decisions in its checkpoint, so it continues the same plan."""
    t = cfg.train
    if ckpt is not None:
        before = RunConfig.from_dict(ckpt["config"])
        amp = before.train.amp if t.amp == "auto" else t.amp
        planned = t.budget is not None and before.plan.get("budget")
        epochs, steps = (before.train.epochs, before.train.steps) if planned else (t.epochs, t.steps)
        plan = before.plan if amp == before.train.amp else {
            **before.plan, "precision": {"amp": amp, "reason": "as asked when resuming"}}
        return dataclasses.replace(cfg, train=dataclasses.replace(t, amp=amp, epochs=epochs, steps=steps),
                                   plan=plan)
    if t.amp == "auto" or t.budget is not None:
        plan = _measure_plan(cfg, model, train_split, val_split, preprocess, device, started) if d.main else {}
        amp_index, epochs, steps = distributed.all_sum(  # the main process's decisions, for all
            [float(AMP_ORDER.index(plan["precision"]["amp"])) if d.main else 0.0,
             float(plan["epochs"]) if d.main else 0.0, float(plan["steps"] or 0) if d.main else 0.0], device, d)
        amp, epochs, steps = AMP_ORDER[int(amp_index)], int(epochs), int(steps) or None
    else:
        plan, amp, epochs, steps = {"precision": {"amp": t.amp, "reason": "as asked"}}, t.amp, t.epochs, t.steps
    return dataclasses.replace(cfg, train=dataclasses.replace(t, amp=amp, epochs=epochs, steps=steps), plan=plan)


def _measure_plan(cfg: RunConfig, model, train_split, val_split, preprocess, device, started) -> dict:
    """Time real training steps (one batch of the training data, preprocessed as in training)
    of each candidate precision and choose; fit the budget's epochs to the chosen one's time."""
    t = cfg.train
    images, labels = next(iter(train_split.loader))
    images, labels = images.to(device), labels.to(device)

    def step(replica, optimizer, scaler, x, y, amp):
        train_step(replica, optimizer, scaler, preprocess(x, train=True), y, amp, t.label_smoothing)

    measure = training_step_timer(model, lambda m: make_optimizer(m, t), step, (images, labels), device)
    precision: Precision = choose_precision(t.amp, device, measure)
    plan = {"precision": {"amp": precision.amp, "reason": precision.reason,
                          "ms_per_step": precision.ms_per_step}, "epochs": t.epochs, "steps": t.steps}
    if t.budget is None:
        return plan
    step_s = (precision.ms_per_step[precision.amp] / 1000 if precision.ms_per_step
              else measure([precision.amp])[precision.amp])
    budget: BudgetPlan = plan_budget(t.budget, time.perf_counter() - started, step_s, len(train_split.loader),
                                     _validation_seconds(model, val_split, preprocess, device, precision.amp,
                                                         t.eval_mirror),
                                     t.epochs, t.val_every)
    plan["budget"] = dataclasses.asdict(budget)
    plan["epochs"] = budget.epochs
    plan["steps"] = budget.steps if budget.steps != budget.epochs * budget.steps_per_epoch else None
    return plan


def _validation_seconds(model, val_split, preprocess, device, amp: str, mirror: bool) -> float:
    """One validation pass, estimated from timed batches of the validation data."""
    images, labels = next(iter(val_split.loader))
    images = images.to(device)
    was_training = model.training
    model.eval()

    def forward():
        with torch.no_grad(), autocast(device, amp):
            for view in preprocess.views(images, mirror):
                model(view)
    try:
        per_batch = time_steps({"eval": forward})["eval"]
    finally:
        model.train(was_training)
    return per_batch * len(val_split.loader)


def _plan_lines(cfg: RunConfig) -> list[str]:
    """The run header's account of what was decided and why."""
    t, plan = cfg.train, cfg.plan
    reason = plan.get("precision", {}).get("reason", "as asked")
    lines = [f"precision {PRECISION_NAMES[t.amp]} ({reason})"]
    budget = plan.get("budget")
    if budget:
        lines.append(BudgetPlan(**budget).describe() + f"; repeat exactly with --epochs {t.epochs} "
                     + (f"--steps {t.steps} " if t.steps else "") + f"--amp {t.amp}")
    if t.val_every != 1:
        lines.append("validation " + ("after the last epoch only" if t.val_every == 0
                                      else f"every {t.val_every} epochs and after the last"))
    return lines


def _apply_new_lr(optimizer, scheduler, old_lr: float, new_lr: float, log) -> None:
    """A resumed run given another --lr (say, after a divergence) scales the schedule."""
    if new_lr == old_lr:
        return
    ratio = new_lr / old_lr
    for group in optimizer.param_groups:
        group["lr"] *= ratio
        if "initial_lr" in group:
            group["initial_lr"] *= ratio
    if hasattr(scheduler, "base_lrs"):
        scheduler.base_lrs = [lr * ratio for lr in scheduler.base_lrs]
    log(f"alexnet: learning rate scaled by {ratio:g} ({old_lr:g} -> {new_lr:g})")


def _mean_image(cfg, ckpt, d, out, t, limit_train, log):
    """The training set's mean image (§2) if the recipe uses one: from the checkpoint, the
    cache, or one pass over the data by the main process (the others then read its cache);
    and the unreadable files that pass skipped."""
    if not cfg.data.mean_image:
        return None, []
    if ckpt is not None and ckpt.get("mean_image") is not None:
        return ckpt["mean_image"], []
    stats_split = load_split(True, cfg.data, t.batch_size, limit=limit_train, ordered=True)
    if d.main:
        image = cached_mean_image(cfg.data, stats_split, out, log=log)
    distributed.barrier(d)
    if not d.main:
        image = cached_mean_image(cfg.data, stats_split, out, log=log)
    return image, list(getattr(stats_split.loader, "unreadable", []))
