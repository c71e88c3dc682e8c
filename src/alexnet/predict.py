"""`alexnet predict`: class names and probabilities for image files.

Images are converted to what the model was trained on: RGB for colour models, grayscale
(luminance) for Fashion-MNIST's; then the evaluation path of §2 (shorter side to the
training resize, the central square, mean subtraction, the centre crop). A Fashion-MNIST model expects a light garment on a dark
background, as in its training images; ordinary photos are the other way round.
"""

from __future__ import annotations

import torch

from .augment import Preprocess
from .checkpoint import load_inference
from .data import load_image, stored_transform
from .engine import autocast, resolve_device


@torch.no_grad()
def predict(path: str, images: list[str], topk: int = 5, device: str = "auto") -> list[dict]:
    dev = resolve_device(device)
    loaded = load_inference(path, dev)
    cfg, m, classes = loaded.config, loaded.config.model, loaded.classes
    transform = stored_transform(cfg.data.resize)
    batch = torch.stack([transform(load_image(p, m.in_channels)) for p in images])  # all or nothing
    preprocess = Preprocess(cfg.data, m.input_size, dev, cfg.train.channels_last, loaded.mean_image)
    with autocast(dev, cfg.train.amp):
        logits = loaded.model(preprocess(batch.to(dev)))
    probs = torch.softmax(logits.float(), dim=1)
    top = probs.topk(min(topk, len(classes)), dim=1)
    return [{"image": str(p),
             "predictions": [{"class": classes[i], "name": loaded.class_names[i], "index": int(i),
                              "probability": float(v)}
                             for v, i in zip(vals.tolist(), idx.tolist())]}
            for p, vals, idx in zip(images, top.values, top.indices)]
