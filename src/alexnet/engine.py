"""One training epoch and one evaluation pass; the entry points decide what to run."""

from __future__ import annotations

import contextlib
import math
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

from .errors import UserError

AMP_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class NonFiniteLoss(RuntimeError):
    pass


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine")
    return device


def autocast(device: torch.device, amp: str):
    """The one precision context of the project: autocast to bf16/fp16, or nothing (fp32)."""
    dtype = AMP_DTYPES[amp]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(device: torch.device, amp: str) -> torch.amp.GradScaler:
    """A loss scaler, active only for fp16 (bf16 has fp32's exponent range)."""
    return torch.amp.GradScaler(device.type, enabled=amp == "fp16")


def topk_correct(logits: torch.Tensor, target: torch.Tensor, ks=(1, 5)) -> list[int]:
    kmax = min(max(ks), logits.shape[1])
    pred = logits.topk(kmax, dim=1).indices
    hit = pred.eq(target[:, None])
    return [int(hit[:, :min(k, kmax)].any(dim=1).sum()) for k in ks]


def train_one_epoch(model, loader, optimizer, scheduler, scaler, preprocess, device, amp: str,
                    label_smoothing: float = 0.0, desc: str = "train", log_every: int = 20,
                    on_step=None) -> dict:
    """Train for one pass over `loader`; returns mean loss, accuracy, images/s."""
    model.train()
    total_loss, correct, seen = 0.0, 0, 0
    start = time.perf_counter()
    bar = tqdm(loader, desc=desc, leave=False, dynamic_ncols=True, mininterval=1.0)
    loss_sum = torch.zeros((), device=device)
    correct_sum = torch.zeros((), device=device, dtype=torch.long)
    for step, (images, labels) in enumerate(bar):
        images = preprocess(images.to(device, non_blocking=True), train=True)
        labels = labels.to(device, non_blocking=True)
        with autocast(device, amp):
            logits = model(images)
            loss = F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        if scheduler is not None:  # per-step schedules; the plateau rule steps per epoch
            scheduler.step()
        n = labels.shape[0]
        loss_sum += loss.detach() * n
        correct_sum += (logits.detach().argmax(1) == labels).sum()
        seen += n
        if on_step is not None:
            on_step()
        if (step + 1) % log_every == 0 or step + 1 == len(loader):
            # one host sync every log_every steps, not every step
            total_loss, correct = float(loss_sum), int(correct_sum)
            if not math.isfinite(total_loss):
                raise NonFiniteLoss(f"loss is {total_loss} at step {step + 1} of {desc}")
            bar.set_postfix(loss=f"{total_loss / seen:.4f}", acc=f"{correct / seen:.4f}",
                            lr=f"{optimizer.param_groups[0]['lr']:.3g}",
                            img_s=f"{seen / (time.perf_counter() - start):.0f}", refresh=False)
    bar.close()
    total_loss, correct = float(loss_sum), int(correct_sum)
    if not math.isfinite(total_loss):
        raise NonFiniteLoss(f"loss is {total_loss} in {desc}")
    elapsed = time.perf_counter() - start
    return {"loss": total_loss / max(seen, 1), "acc": correct / max(seen, 1), "images": seen,
            "seconds": elapsed, "images_per_s": seen / elapsed}


@torch.no_grad()
def evaluate(model, loader, preprocess, device, amp: str = "off", desc: str = "eval",
             ten_crop: bool = False) -> dict:
    """Top-1 and top-5 accuracy and error, mean loss, and the number of images.

    ten_crop: §4.1's test, the softmax averaged over the four corner and centre patches
    and their mirrors; otherwise the centre patch alone.
    """
    model.eval()
    loss_sum, top1, top5, seen = 0.0, 0, 0, 0
    start = time.perf_counter()
    for images, labels in tqdm(loader, desc=desc, leave=False, dynamic_ncols=True, mininterval=1.0):
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        views = preprocess.ten_crop(images) if ten_crop else [preprocess(images, train=False)]
        log_probs = []
        for view in views:
            with autocast(device, amp):
                log_probs.append(torch.log_softmax(model(view).float(), dim=1))
        # log of the mean softmax over the views, computed stably
        log_mean = torch.logsumexp(torch.stack(log_probs), dim=0) - math.log(len(views))
        loss_sum += float(F.nll_loss(log_mean, labels, reduction="sum"))
        c1, c5 = topk_correct(log_mean, labels)
        top1, top5, seen = top1 + c1, top5 + c5, seen + labels.shape[0]
    n = max(seen, 1)
    return {"images": seen, "loss": loss_sum / n, "top1": top1 / n, "top5": top5 / n,
            "top1_error": 1 - top1 / n, "top5_error": 1 - top5 / n,
            "patches": 10 if ten_crop else 1, "seconds": time.perf_counter() - start}
