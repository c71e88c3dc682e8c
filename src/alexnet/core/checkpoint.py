"""Checkpoints: written atomically, loaded without unpickling code.

A training checkpoint (`*.pt`) is one torch.save'd dict of tensors and plain Python values
(config, class names, optimiser/scheduler state, the epoch and batch reached), read back
with torch.load(weights_only=True), which refuses anything that would run code. It holds
no RNG state: every training step reseeds from (seed, epoch, step, rank)
(engine.step_seed), so a run resumed with the same number of processes and the same
batch draws what the uninterrupted one drew. Final weights are also written as
safetensors, with the config and class names in its metadata, so either file alone
rebuilds the model.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from ..config import ModelConfig, RunConfig
from ..run.errors import UserError
from ..run.jsonio import atomic_write, to_json
from ..run.runtime import stored_precision
from .augment import Preprocess
from .engine import Classifier
from .machine import select_lrn
from .model import AlexNet

FORMAT = "alexnet-checkpoint"
VERSION = 1


def save_checkpoint(path: str | Path, state: dict) -> None:
    """`state` as a training checkpoint at `path`, atomically: a write that finds no room
    raises DiskFull (run/errors.py) and leaves the previous file as it was."""

    def write(tmp: str) -> None:
        # through a Python file, so that a failed write's OSError (its errno) reaches
        # atomic_write: torch.save(obj, a path) reports only "file write failed"
        with open(tmp, "wb") as f:
            torch.save({"format": FORMAT, "version": VERSION, **state}, f)

    atomic_write(Path(path), write)


MEAN_IMAGE_KEY = "data.mean_image"  # the training set's mean image, beside the weights


def save_weights(
    path: str | Path,
    model: AlexNet,
    run_config: RunConfig,
    classes: list[str],
    mean_image: torch.Tensor | None = None,
    class_names: list[str] | None = None,
) -> None:
    """The model's weights as safetensors; config and class names go in the metadata."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if mean_image is not None:
        tensors[MEAN_IMAGE_KEY] = mean_image.contiguous().cpu()
    metadata = {
        "format": FORMAT,
        "config": to_json(run_config.to_dict(), indent=None),
        "classes": to_json(classes, indent=None),
        "class_names": to_json(class_names or classes, indent=None),
    }
    atomic_write(Path(path), lambda tmp: save_file(tensors, tmp, metadata=metadata))


def _check_file(path: Path) -> None:
    if not path.exists():
        raise UserError(f"{path}: no such checkpoint")
    if not path.is_file():
        raise UserError(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise UserError(f"{path}: empty file, not a checkpoint")


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """A training checkpoint as a dict, or a one-line UserError saying what is wrong."""
    path = Path(path)
    _check_file(path)
    if path.suffix == ".safetensors":
        return _check_contents(path, _load_safetensors(path))
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's message opens with a paragraph about weights_only; the line that says
        # what was found comes after it
        lines = [s.strip() for s in str(e).splitlines() if s.strip()]
        detail = next(
            (s for s in lines[1:] if not s.startswith(("Please file", "Check the doc")) and not s.endswith("error:")),
            "unsafe content",
        )
        if "GLOBAL" in detail or "reduce" in detail.lower():
            raise UserError(f"{path}: refused to load (it holds more than tensors and plain values: {detail})") from e
        raise UserError(f"{path}: not a readable checkpoint (corrupt, or not written by torch.save: {detail})") from e
    except Exception as e:  # noqa: BLE001 - garbage bytes fail deep in the unpickler, any type
        first = str(e).strip().split(". ")[0].splitlines()[0][:160] if str(e).strip() else ""
        raise UserError(
            f"{path}: not a readable checkpoint (truncated or corrupt? "
            f"{type(e).__name__}{': ' + first if first else ''})"
        ) from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        if isinstance(ckpt, dict) and ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
            raise UserError(
                f"{path}: a bare state dict, not an alexnet checkpoint (no config and "
                f"class names); torchvision AlexNet weights become one with "
                f"`alexnet import-torchvision {path} OUT.pt`"
            )
        raise UserError(f"{path}: not an alexnet checkpoint (no config and class names; a bare state dict?)")
    return _check_contents(path, ckpt)


def _check_contents(path: Path, ckpt: dict) -> dict:
    """What evaluate, predict and resume read from a checkpoint is there and consistent:
    a config, weights, one class name per output, a mean image with the model's channels
    (its size is checked by load_inference: export does not need it)."""
    try:
        cfg = RunConfig.from_dict(ckpt["config"])
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise UserError(f"{path}: its config is missing or invalid ({type(e).__name__}: {e})") from e
    m, data = cfg.model, cfg.data
    problems = []
    if not isinstance(ckpt.get("model"), dict):
        problems.append("no weights")
    for key in ("classes", "class_names"):
        names = ckpt.get(key) or ckpt.get("classes")  # as load_inference reads them
        if (
            not isinstance(names, (list, tuple))
            or len(names) != m.num_classes
            or not all(isinstance(n, str) for n in names)
        ):
            count = len(names) if isinstance(names, (list, tuple)) else "no"
            problems.append(f"{count} {key} for a model with {m.num_classes} outputs")
    if not isinstance(data.resize, int) or not 1 <= data.resize <= 16 * m.input_size:
        # the stored size is the crop's plus a margin (256 for 227); far more is a broken config
        problems.append(f"data.resize {data.resize!r} is not a size from 1 to 16 x the input size {m.input_size}")
    if data.channels != m.in_channels:
        problems.append(f"{data.channels} channel means for a {m.in_channels}-channel model")
    mean_image = ckpt.get("mean_image")
    if mean_image is not None and (
        not isinstance(mean_image, torch.Tensor) or mean_image.dim() != 3 or mean_image.shape[0] != m.in_channels
    ):
        problems.append(
            f"a mean image of shape {tuple(getattr(mean_image, 'shape', ()))} for a {m.in_channels}-channel model"
        )
    if problems:
        raise UserError(f"{path}: inconsistent checkpoint: {'; '.join(problems)}")
    return ckpt


def _load_safetensors(path: Path) -> dict:
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        state = load_file(str(path))
        if meta.get("format") != FORMAT:
            raise UserError(f"{path}: safetensors file without alexnet metadata (config, classes)")
        return {
            "format": FORMAT,
            "config": json.loads(meta["config"]),
            "classes": json.loads(meta["classes"]),
            "class_names": json.loads(meta.get("class_names", meta["classes"])),
            "mean_image": state.pop(MEAN_IMAGE_KEY, None),
            "model": state,
        }
    except (SafetensorError, OSError, json.JSONDecodeError, KeyError) as e:
        raise UserError(f"{path}: not a readable safetensors checkpoint ({e})") from e


def model_from_checkpoint(ckpt: dict, path: str | Path = "checkpoint") -> AlexNet:
    """Rebuild the model a checkpoint describes and load its weights."""
    try:
        model = AlexNet(ModelConfig.from_dict(ckpt["config"]["model"]))
        model.load_state_dict(ckpt["model"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        lines = [s.strip() for s in str(e).strip().splitlines() if s.strip()] or [type(e).__name__]
        first = lines[1] if len(lines) > 1 and lines[0].endswith(":") else lines[0]  # load_state_dict's
        raise UserError(f"{path}: weights do not fit the model it describes ({first})") from e
    bad = next(
        (k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()), None
    )
    if bad is not None:  # e.g. saved after training diverged: every prediction would be NaN
        raise UserError(f"{path}: weights hold NaN or infinite values (first in {bad})")
    return model


@dataclass
class Inference(Classifier):
    """A checkpoint loaded for evaluation and prediction: the Classifier (the model in eval
    mode on the device, in its run's memory format; evaluation's preprocessing with the
    training set's mean image; the run's precision as runtime.stored_precision allows it
    on this device), and what names its outputs. `probabilities(images)` is the softmax
    of a uint8 batch (averaged over §4.1's ten patches with ten_crop=True): what
    evaluate, predict, serve, features and neighbors all run."""

    config: RunConfig
    classes: list[str]  # as the data names them (folder names, wnids)
    class_names: list[str]  # for people (ImageNet: "tench" for n01440764)
    mean_image: torch.Tensor | None  # the training set's, if the model was trained with one
    lrn: str = ""  # the LRN kernel chosen for this machine, and why (machine.select_lrn)

    @classmethod
    def of(
        cls,
        model: AlexNet,
        config: RunConfig,
        classes: list[str],
        class_names: list[str] | None = None,
        mean_image: torch.Tensor | None = None,
        amp: str | None = None,
        lrn: str = "",
    ) -> Inference:
        """The model (on its device) as its run evaluates it; amp: another precision than
        the run's (evaluate --amp), under the same rule."""
        device = next(model.parameters()).device
        channels_last = config.train.channels_last
        model = model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format).eval()
        preprocess = Preprocess(config.data, config.model.input_size, device, channels_last, mean_image)
        precision = stored_precision(config.train.amp if amp is None else amp, device)
        return cls(model, preprocess, precision, config, classes, class_names or classes, mean_image, lrn)


def load_inference(
    path: str | Path, device: torch.device, amp: str | None = None, lrn_kernel: str = "auto"
) -> Inference:
    """A checkpoint (training .pt or safetensors) ready for inference on `device`; amp: a
    precision other than the run's (evaluate --amp); its LRN kernel chosen once here
    (`lrn_kernel`; auto: the machine's cached check and timing, made on the first use)."""
    ckpt = load_checkpoint(path)
    model = model_from_checkpoint(ckpt, path).to(device)
    choice = select_lrn(model, device, lrn_kernel)
    classes = list(ckpt["classes"])
    config = RunConfig.from_dict(ckpt["config"])
    mean_image, size = ckpt.get("mean_image"), config.data.resize
    if mean_image is not None and mean_image.shape[1:] != (size, size):  # subtracted from each image
        raise UserError(
            f"{path}: inconsistent checkpoint: a mean image of "
            f"{mean_image.shape[1]}x{mean_image.shape[2]} pixels for images stored at "
            f"{size}x{size}"
        )
    names = list(ckpt.get("class_names") or classes)
    return Inference.of(model, config, classes, names, mean_image, amp, choice.describe())


def load_model(path: str | Path, device: torch.device) -> tuple[AlexNet, RunConfig, list[str]]:
    """Model (in eval mode, on `device`), its run config and class names from a checkpoint."""
    loaded = load_inference(path, device)
    return loaded.model, loaded.config, loaded.classes
