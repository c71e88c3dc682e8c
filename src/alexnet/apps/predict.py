"""`alexnet predict`: class names and probabilities for image files.

Images are converted to what the model was trained on: RGB for colour models, grayscale
(luminance) for Fashion-MNIST's; then the evaluation path of §2 (shorter side to the
training resize, the central square, mean subtraction, the centre crop), in the
checkpoint's precision: checkpoint.Inference, which evaluate and serve run too. A
Fashion-MNIST model expects a light garment on a dark background, as in its training
images; ordinary photos are the other way round.
"""

from __future__ import annotations

import torch

from ..core.checkpoint import load_inference
from ..data.datasets import load_image, stored_transform
from ..run.errors import UserError
from ..run.runtime import resolve_device


def predict_files(
    path: str, images: list[str], topk: int = 5, device: str = "auto", batch_size: int = 64, ten_crop: bool = False
) -> list[dict]:
    """Top-k classes of each image file; all or nothing: one unreadable image is a UserError.

    The images go through the model `batch_size` at a time, so that a long list of
    files (a shell glob over a folder) does not become one batch larger than memory.
    ten_crop: the softmax averaged over §4.1's ten patches instead of the centre patch's.
    """
    if topk < 1:
        raise UserError(f"--topk must be at least 1, got {topk}")
    loaded = load_inference(path, resolve_device(device))
    transform, channels = stored_transform(loaded.config.data.resize), loaded.config.model.in_channels
    results = []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        probs = loaded.probabilities(torch.stack([transform(load_image(p, channels)) for p in chunk]), ten_crop)
        finite = torch.isfinite(probs).all(dim=1)
        if not finite.all():
            raise UserError(
                f"{path}: the model's outputs for {chunk[int((~finite).nonzero()[0])]} are not finite (NaN or infinity)"
            )
        top = probs.topk(min(topk, len(loaded.classes)), dim=1)
        results += [
            {
                "image": str(p),
                "predictions": [
                    {
                        "class": loaded.classes[i],
                        "name": loaded.class_names[i],
                        "index": int(i),
                        "probability": float(v),
                    }
                    for v, i in zip(vals.tolist(), idx.tolist())
                ],
            }
            for p, vals, idx in zip(chunk, top.values, top.indices)
        ]
    return results
