"""One training epoch and one evaluation pass; the entry points decide what to run."""

from __future__ import annotations

import contextlib
import math
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

from .distributed import Dist, all_sum, any_flag
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


def step_seed(seed: int, epoch: int, step: int, rank: int) -> int:
    """The RNG seed of one training step of one process.

    Every step reseeds, so that its dropout masks, crops, mirrors and lighting are a
    function of (seed, epoch, step, rank) alone: a run resumed at any step, with no RNG
    state carried over, draws what the uninterrupted run drew.
    """
    return ((seed * 1_000_003 + epoch) * 1_000_003 + step) * 1_009 + rank


def _totals(loss_sum, correct_sum, seen: int, device, d: Dist, where: str) -> list[float]:
    """(loss sum, correct, images) over all processes; a NaN or infinite loss raises."""
    totals = all_sum([float(loss_sum), float(correct_sum), float(seen)], device, d)
    if not math.isfinite(totals[0]):
        raise NonFiniteLoss(f"loss is {totals[0]} at {where}")
    return totals


def train_one_epoch(model, loader, optimizer, scheduler, scaler, preprocess, device, amp: str,
                    label_smoothing: float = 0.0, desc: str = "train", log_every: int = 20,
                    seed: int = 0, epoch: int = 0, first_step: int = 0, d: Dist = Dist(),
                    should_stop=lambda: False, show: bool = True) -> dict:
    """Train for one pass over `loader` (from batch `first_step` on).

    Returns loss, accuracy and images/s over all processes, and `steps`, the index of the
    next batch; `stopped` when should_stop() became true on any process, after a whole
    step. Losses are checked for NaN/inf every log_every steps, on all processes at once.
    """
    model.train()
    start = time.perf_counter()
    bar = tqdm(loader, desc=desc, leave=False, dynamic_ncols=True, mininterval=1.0, disable=not show,
               total=len(loader) - first_step)
    loss_sum = torch.zeros((), device=device)
    correct_sum = torch.zeros((), device=device)
    seen, step, stopped = 0, first_step, False
    for step, (images, labels) in enumerate(bar, start=first_step):
        torch.manual_seed(step_seed(seed, epoch, step, d.rank))
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
        last = step + 1 == len(loader)
        if (step + 1) % log_every == 0 and not last:
            # one host sync (and one small all-reduce under DDP) every log_every steps
            totals = _totals(loss_sum, correct_sum, seen, device, d, f"step {step + 1} of {desc}")
            bar.set_postfix(loss=f"{totals[0] / totals[2]:.4f}", acc=f"{totals[1] / totals[2]:.4f}",
                            lr=f"{optimizer.param_groups[0]['lr']:.3g}",
                            img_s=f"{totals[2] / (time.perf_counter() - start):.0f}", refresh=False)
        if any_flag(should_stop(), device, d) and not last:
            stopped = True
            break
    bar.close()
    totals = _totals(loss_sum, correct_sum, seen, device, d, desc)
    elapsed = time.perf_counter() - start
    images = max(totals[2], 1.0)
    return {"loss": totals[0] / images, "acc": totals[1] / images, "images": int(totals[2]),
            "seconds": elapsed, "images_per_s": totals[2] / elapsed, "steps": step + 1,
            "stopped": stopped}


@torch.no_grad()
def evaluate(model, loader, preprocess, device, amp: str = "off", desc: str = "eval",
             ten_crop: bool = False, d: Dist = Dist(), show: bool = True) -> dict:
    """Top-1 and top-5 accuracy and error, mean loss, and the number of images.

    ten_crop: §4.1's test, the softmax averaged over the four corner and centre patches
    and their mirrors; otherwise the centre patch alone. Under DDP pass the unwrapped
    model: processes may hold different numbers of batches, so no collective may run
    per batch.
    """
    model.eval()
    loss_sum, top1, top5, seen = 0.0, 0, 0, 0
    start = time.perf_counter()
    for images, labels in tqdm(loader, desc=desc, leave=False, dynamic_ncols=True, mininterval=1.0,
                               disable=not show):
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
    # each process saw its own images (ShardedBatches: every image once): add them up;
    # unreadable files were skipped, and the result says how many
    skipped = len(getattr(loader, "unreadable", []))
    loss_sum, top1, top5, seen, skipped = all_sum([loss_sum, top1, top5, seen, skipped], device, d)
    n = max(seen, 1)
    return {"images": int(seen), "loss": loss_sum / n, "top1": top1 / n, "top5": top5 / n,
            "top1_error": 1 - top1 / n, "top5_error": 1 - top5 / n,
            "patches": 10 if ten_crop else 1, "unreadable": int(skipped),
            "seconds": time.perf_counter() - start}
