"""Checkpoints: written atomically, loaded without unpickling code.

A training checkpoint (`*.pt`) is one torch.save'd dict of tensors and plain Python values
(config, class names, optimiser/scheduler state, RNG state), read back with
torch.load(weights_only=True), which refuses anything that would run code. Final weights
are also written as safetensors, with the config and class names in its metadata, so
either file alone rebuilds the model.
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from .config import ModelConfig, RunConfig
from .errors import UserError
from .model import AlexNet

FORMAT = "alexnet-checkpoint"
VERSION = 1


def atomic_write(path: Path, write) -> None:
    """write(tmp_path) then fsync and rename over `path`: a reader sees old or new, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save_checkpoint(path: str | Path, state: dict) -> None:
    atomic_write(Path(path), lambda tmp: torch.save({"format": FORMAT, "version": VERSION, **state}, tmp))


MEAN_IMAGE_KEY = "data.mean_image"  # the training set's mean image, beside the weights


def save_weights(path: str | Path, model: AlexNet, run_config: RunConfig, classes: list[str],
                 mean_image: torch.Tensor | None = None, class_names: list[str] | None = None) -> None:
    """The model's weights as safetensors; config and class names go in the metadata."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if mean_image is not None:
        tensors[MEAN_IMAGE_KEY] = mean_image.contiguous().cpu()
    metadata = {"format": FORMAT, "config": json.dumps(run_config.to_dict()),
                "classes": json.dumps(classes), "class_names": json.dumps(class_names or classes)}
    atomic_write(Path(path), lambda tmp: save_file(tensors, tmp, metadata=metadata))


def _check_file(path: Path) -> None:
    if not path.exists():
        raise UserError(f"{path}: no such checkpoint")
    if not path.is_file():
        raise UserError(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise UserError(f"{path}: empty file, not a checkpoint")


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """A training checkpoint as a dict, or a one-line UserError saying what is wrong."""
    path = Path(path)
    _check_file(path)
    if path.suffix == ".safetensors":
        return _load_safetensors(path)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "unsafe content"
        raise UserError(f"{path}: refused to load (it holds more than tensors and plain "
                        f"values: {first})") from e
    except Exception as e:  # noqa: BLE001 - garbage bytes fail deep in the unpickler, any type
        raise UserError(f"{path}: not a readable checkpoint ({type(e).__name__})") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise UserError(f"{path}: not an alexnet checkpoint (no config and class names; "
                        "a bare state dict?)")
    return ckpt


def _load_safetensors(path: Path) -> dict:
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        state = load_file(str(path))
        if meta.get("format") != FORMAT:
            raise UserError(f"{path}: safetensors file without alexnet metadata (config, classes)")
        return {"format": FORMAT, "config": json.loads(meta["config"]),
                "classes": json.loads(meta["classes"]),
                "class_names": json.loads(meta.get("class_names", meta["classes"])),
                "mean_image": state.pop(MEAN_IMAGE_KEY, None),
                "model": state}
    except (SafetensorError, OSError, json.JSONDecodeError, KeyError) as e:
        raise UserError(f"{path}: not a readable safetensors checkpoint ({e})") from e


def model_from_checkpoint(ckpt: dict, path: str | Path = "checkpoint") -> AlexNet:
    """Rebuild the model a checkpoint describes and load its weights."""
    try:
        model = AlexNet(ModelConfig.from_dict(ckpt["config"]["model"]))
        model.load_state_dict(ckpt["model"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0]
        raise UserError(f"{path}: weights do not fit the model it describes ({first})") from e
    return model


@dataclass
class Inference:
    """What evaluation and prediction need from a checkpoint."""
    model: AlexNet                    # in eval mode, on the device
    config: RunConfig
    classes: list[str]                # as the data names them (folder names, wnids)
    class_names: list[str]            # for people (ImageNet: "tench" for n01440764)
    mean_image: torch.Tensor | None   # the training set's, if the model was trained with one


def load_inference(path: str | Path, device: torch.device) -> Inference:
    ckpt = load_checkpoint(path)
    model = model_from_checkpoint(ckpt, path).to(device).eval()
    classes = list(ckpt["classes"])
    return Inference(model, RunConfig.from_dict(ckpt["config"]), classes,
                     list(ckpt.get("class_names") or classes), ckpt.get("mean_image"))


def load_model(path: str | Path, device: torch.device) -> tuple[AlexNet, RunConfig, list[str]]:
    """Model (in eval mode, on `device`), its run config and class names from a checkpoint."""
    loaded = load_inference(path, device)
    return loaded.model, loaded.config, loaded.classes
