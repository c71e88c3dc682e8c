"""Interoperability: torchvision AlexNet weights in, ONNX out.

import_torchvision turns a torchvision AlexNet state dict (e.g. alexnet-owt-7be5be79.pth,
downloaded by the user) into an alexnet checkpoint of the `owt` variant, whose layers and
state-dict keys are torchvision's. The checkpoint's data config carries torchvision's
ImageNet normalisation in 0..255 pixel units, so `evaluate` and `predict` (uint8 pixels,
then (x - mean) / std) compute what torchvision's ToTensor + Normalize feed the model.

export_onnx writes a checkpoint's model as ONNX: fp32, eval mode, the already
preprocessed N x C x H x W float tensor in, logits out, with a dynamic batch axis.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from ..config import IMAGENET_MEAN, IMAGENET_STD, DataConfig, RunConfig, TrainConfig
from ..core.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from ..core.model import build_model, model_config
from ..data.imagenet import imagenet_categories
from ..run.errors import UserError
from ..run.jsonio import atomic_write, to_json

# torchvision's ImageNet Normalize(mean, std) acts on pixels / 255: the same in 0..255 units.
ONNX_OPSET = 17


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A file holding a plain dict of tensors, or a one-line UserError naming the path."""
    if not path.is_file():
        raise UserError(f"{path}: {'not a file' if path.exists() else 'no such file'}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - garbage bytes fail deep in the unpickler, any type
        raise UserError(
            f"{path}: not readable as a file of tensors (torch.load with weights_only=True failed: {type(e).__name__})"
        ) from e
    if isinstance(state, dict) and state.get("format") == "alexnet-checkpoint":
        raise UserError(f"{path}: already an alexnet checkpoint, not torchvision weights")
    if (
        not isinstance(state, dict)
        or not state
        or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items())
    ):
        raise UserError(
            f"{path}: not a state dict (expected a dict of tensors, as torch.save(model.state_dict()) writes)"
        )
    return state


def _read_classes(path: Path, count: int) -> list[str]:
    """One class name per line (blank lines skipped); exactly `count` of them."""
    try:
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not a readable class list ({e.__class__.__name__})") from e
    if len(names) != count:
        raise UserError(f"{path}: {len(names)} class names for weights with {count} classes")
    return names


def _default_classes(count: int) -> list[str]:
    """torchvision's ImageNet category names (local metadata) for 1000 classes, else class_i."""
    if count == 1000:
        return imagenet_categories()
    return [f"class_{i}" for i in range(count)]


def _imagenet_data() -> DataConfig:
    """torchvision's evaluation preprocessing: shorter side to 256, per-channel mean and std.

    mean_image=False: torchvision subtracts a per-channel mean and there is no mean image
    to ship (from_dict drops the key where DataConfig has no such field).
    """
    return DataConfig.from_dict(
        {"name": "imagenet", "resize": 256, "mean": IMAGENET_MEAN, "std": IMAGENET_STD, "mean_image": False}
    )


def import_torchvision(weights: str | Path, out: str | Path, classes: str | Path | None = None) -> dict:
    """Write torchvision AlexNet weights as an `owt` alexnet checkpoint; returns a summary."""
    weights = Path(weights)
    state = _read_state_dict(weights)
    fc8 = state.get("classifier.6.weight")
    if fc8 is None or fc8.dim() != 2:
        raise UserError(f"{weights}: not torchvision AlexNet weights (no 2-D classifier.6.weight)")
    num_classes = fc8.shape[0]
    model = build_model("owt", num_classes=num_classes)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = [
        f"{label} {', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''}"
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape", wrong))
        if keys
    ]
    if problems:
        raise UserError(f"{weights}: keys do not fit torchvision's AlexNet ({'; '.join(problems)})")
    model.load_state_dict(state, strict=True)
    names = _read_classes(Path(classes), num_classes) if classes else _default_classes(num_classes)
    config = RunConfig(
        model=model_config("owt", num_classes=num_classes), data=_imagenet_data(), train=TrainConfig(amp="off")
    )
    save_checkpoint(out, {"config": config.to_dict(), "classes": names, "model": model.state_dict(), "epoch": 0})
    return {"checkpoint": str(out), "weights": str(weights), "classes": num_classes}


def export_onnx(checkpoint: str | Path, out: str | Path, batch_size: int = 1) -> dict:
    """Export a checkpoint's model to ONNX with the TorchScript exporter; returns a summary.

    Why the TorchScript exporter (dynamo=False): it needs no extra package (the dynamo
    exporter needs onnxscript) and handles this plain feed-forward network on torch 2.5 and
    later. `batch_size` only sizes the example input; the batch axis stays dynamic.
    """
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
    try:
        import onnx
    except ImportError as e:
        raise UserError("ONNX export needs the onnx package: pip install 'alexnet[onnx]'") from e
    ckpt = load_checkpoint(checkpoint)
    model = model_from_checkpoint(ckpt, checkpoint).float().eval().set_lrn_kernel("torch")  # traced as operations
    cfg, classes = RunConfig.from_dict(ckpt["config"]), list(ckpt["classes"])
    m = cfg.model
    example = torch.zeros(batch_size, m.in_channels, m.input_size, m.input_size)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation notice
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (example,),
            str(out),
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=ONNX_OPSET,
            dynamo=False,
        )
    proto = onnx.load(str(out))
    metadata = {
        "classes": to_json(classes, indent=None),
        "std": to_json(list(cfg.data.std), indent=None),
        "resize": str(cfg.data.resize),
        "model_config": to_json(m.to_dict(), indent=None),
    }
    mean_image = ckpt.get("mean_image")  # §2's per-pixel mean, where the model was trained with one
    if mean_image is not None:
        metadata["mean_image"] = to_json(mean_image.float().round(decimals=4).tolist(), indent=None)
        subtract = "the mean_image (C x resize x resize)"
    else:
        metadata["mean"] = to_json(list(cfg.data.mean), indent=None)
        subtract = "the per-channel mean"
    metadata["preprocessing"] = (
        f"{'RGB' if m.in_channels == 3 else 'grayscale'} pixels in 0..255; shorter side to resize "
        f"and the central resize x resize square; subtract {subtract}; divide by std; the centre "
        f"{m.input_size} x {m.input_size} crop; N x C x H x W float32"
    )
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=value)
    atomic_write(Path(out), lambda tmp: Path(tmp).write_bytes(proto.SerializeToString()))
    return {
        "checkpoint": str(checkpoint),
        "onnx": str(out),
        "input": ["batch", m.in_channels, m.input_size, m.input_size],
        "classes": len(classes),
    }
