"""`alexnet train`: build data, model and optimiser from a RunConfig and run the epochs."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint, save_weights
from .config import RunConfig, TrainConfig
from .augment import Preprocess
from .data import is_fashion_mnist, load_split
from .imagenet import human_names
from .engine import NonFiniteLoss, evaluate, grad_scaler, resolve_device, train_one_epoch
from .errors import UserError
from .model import AlexNet, count_parameters
from .stats import cached_mean_image

METRIC_FIELDS = ("epoch", "step", "lr", "train_loss", "train_acc", "val_loss", "val_top1",
                 "val_top5", "epoch_seconds", "train_images_per_s")


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

    def step_factor(self, step: int) -> float:
        return 0.1 ** (step // (self.step_epochs * self.steps_per_epoch))

    def onecycle_factor(self, step: int) -> float:
        warm = self.warmup_epochs * self.steps_per_epoch
        if step < warm:
            return (step + 1) / warm
        total = self.epochs * self.steps_per_epoch
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
        optimizer, LrSchedule(cfg.schedule, cfg.epochs, steps_per_epoch, cfg.step_epochs, cfg.warmup_epochs))


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
    return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                           weight_decay=cfg.weight_decay, foreach=True)


def paper_momentum_at_drop(optimizer: torch.optim.SGD, old_lr: float, new_lr: float) -> None:
    """Make PyTorch's SGD follow §5's rule across a drop: b = -v / lr, so b *= old / new."""
    for state in optimizer.state.values():
        if state.get("momentum_buffer") is not None:
            state["momentum_buffer"].mul_(old_lr / new_lr)


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _append_metrics(path: Path, row: dict) -> None:
    new = not path.exists()
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=METRIC_FIELDS)
        if new:
            writer.writeheader()
        writer.writerow({k: row[k] for k in METRIC_FIELDS})


def _log(message: str) -> None:
    print(message, flush=True)


def train(cfg: RunConfig, resume: str | None = None, limit_train: int | None = None,
          limit_val: int | None = None) -> dict:
    """Run training as `cfg` says; returns the final validation metrics and paths."""
    t = cfg.train
    out = Path(t.out)
    device = resolve_device(t.device)
    torch.manual_seed(t.seed)
    ckpt = load_checkpoint(resume) if resume else None
    if ckpt is None:  # the data decides the input channels; the class count comes below
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, in_channels=cfg.data.channels))
    else:  # the model is the checkpoint's; the rest may change (e.g. more epochs)
        cfg = dataclasses.replace(cfg, model=RunConfig.from_dict(ckpt["config"]).model)
        if cfg.model.in_channels != cfg.data.channels:
            raise UserError(f"{resume}: a {cfg.model.in_channels}-channel model cannot train on "
                            f"{cfg.data.channels}-channel data {cfg.data.name}")
    m = cfg.model
    train_split = load_split(True, cfg.data, t.batch_size, t.seed, limit_train)
    val_split = load_split(False, cfg.data, t.batch_size, t.seed, limit_val)
    if train_split.classes != val_split.classes:
        raise UserError(f"{cfg.data.name}: the training and validation classes differ")
    classes = train_split.classes
    class_names = None if is_fashion_mnist(cfg.data) else human_names(classes, Path(cfg.data.name),
                                                                       cfg.data.synsets)
    if ckpt is None:
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(m, num_classes=len(classes)))
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

    optimizer = make_optimizer(model, t)
    scheduler = make_scheduler(optimizer, t, len(train_split.loader))
    per_step = None if t.schedule == "plateau" else scheduler
    scaler = grad_scaler(device, t.amp)
    start_epoch, best_top1 = 0, -1.0
    if ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"])
        start_epoch, best_top1 = ckpt["epoch"], ckpt["best_top1"]

    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    mean_image = None
    if cfg.data.mean_image:
        mean_image = ckpt.get("mean_image") if ckpt is not None else None
        if mean_image is None:
            stats_split = load_split(True, cfg.data, t.batch_size, limit=limit_train, ordered=True)
            mean_image = cached_mean_image(cfg.data, stats_split, out, log=_log)
    preprocess = Preprocess(cfg.data, m.input_size, device, t.channels_last, mean_image)
    _log(f"alexnet: model {m.name} ({count_parameters(model):,} parameters), "
         f"{train_split.size:,} training / {val_split.size:,} validation images, "
         f"{len(classes)} classes, device {device}, precision {t.amp if t.amp != 'off' else 'fp32'}, "
         f"{'channels_last, ' if t.channels_last else ''}loader workers {train_split.workers}, "
         f"torch threads {torch.get_num_threads()}, schedule {t.schedule}, out {out}")

    val = {}
    for epoch in range(start_epoch, t.epochs):
        train_split.loader.set_epoch(epoch)
        started = time.perf_counter()
        lr_used = optimizer.param_groups[0]["lr"]
        try:
            tr = train_one_epoch(model, train_split.loader, optimizer, per_step, scaler, preprocess,
                                 device, t.amp, t.label_smoothing, desc=f"epoch {epoch + 1}/{t.epochs}",
                                 log_every=t.log_every)
        except NonFiniteLoss as e:
            raise UserError(f"{e}: training diverged; try a lower --lr or --init caffe "
                            f"(the last good checkpoint is {out / 'last.pt'})") from e
        val = evaluate(model, val_split.loader, preprocess, device, t.amp, desc="validate")
        if per_step is None:
            scheduler.step(val["top1_error"])
        new_lr = optimizer.param_groups[0]["lr"]
        if new_lr < lr_used and t.schedule != "onecycle":
            _log(f"alexnet: learning rate {lr_used:.3g} -> {new_lr:.3g} (drop {lr_drops(optimizer, t)})")
            if t.momentum_rule == "paper":
                paper_momentum_at_drop(optimizer, lr_used, new_lr)
        finished = t.schedule == "plateau" and lr_drops(optimizer, t) > t.lr_drops
        row = {"epoch": epoch + 1, "step": (epoch + 1) * len(train_split.loader), "lr": lr_used,
               "train_loss": tr["loss"], "train_acc": tr["acc"], "val_loss": val["loss"],
               "val_top1": val["top1"], "val_top5": val["top5"],
               "epoch_seconds": time.perf_counter() - started, "train_images_per_s": tr["images_per_s"]}
        _append_metrics(out / "metrics.csv", row)
        _log(f"epoch {epoch + 1}/{t.epochs}: train loss {tr['loss']:.4f} acc {tr['acc']:.4f} | "
             f"val loss {val['loss']:.4f} top-1 {val['top1']:.4f} top-5 {val['top5']:.4f} | "
             f"{tr['images_per_s']:.0f} img/s, {row['epoch_seconds']:.1f} s")
        is_best = val["top1"] > best_top1
        best_top1 = max(best_top1, val["top1"])
        state = {"config": cfg.to_dict(), "classes": classes, "class_names": class_names or classes,
                 "model": model.state_dict(),
                 "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                 "scaler": scaler.state_dict(), "rng": rng_state(), "epoch": epoch + 1,
                 "step": row["step"], "best_top1": best_top1, "metrics": row, "finished": finished}
        if mean_image is not None:
            state["mean_image"] = mean_image.cpu()
        save_checkpoint(out / "last.pt", state)
        if is_best:
            save_checkpoint(out / "best.pt", state)
        if finished:  # §5: three drops, then stop when the error stops improving again
            _log(f"alexnet: validation error stopped improving after {t.lr_drops} drops: done")
            break
    save_weights(out / "model.safetensors", model, cfg, classes, mean_image, class_names)
    return {"out": str(out), "val": val, "checkpoint": str(out / "last.pt")}
