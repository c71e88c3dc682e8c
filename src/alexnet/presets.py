"""Recipes (how to train) and data defaults (how to read the data).

Recipes:
- `paper` (the default for image folders): the 2012 recipe exactly. The `paper` model
  with the paper's init; the per-pixel mean image (§2); random 227 crops of the 256
  image, mirrors and PCA lighting (§4.1); SGD batch 128, lr 0.01, momentum 0.9 with the
  paper's update rule, weight decay 5e-4, lr / 10 when the validation error stops
  improving, three times, then stop (at most 90 epochs) (§5).
- `fashion-mnist` (the default for Fashion-MNIST): sized to train in about five minutes
  on a 2-core CPU; every departure from the paper is listed below with its reason.

A recipe sets the model, the training and the augmentation; the data decides how it is
read (files, channels, per-channel statistics, stored size).
"""

from __future__ import annotations

import dataclasses

from .config import DataConfig, ModelConfig, RunConfig, TrainConfig
from .data import FASHION_MNIST, FASHION_MNIST_MEAN, FASHION_MNIST_STD, is_fashion_mnist
from .errors import UserError
from .model import model_config


@dataclasses.dataclass(frozen=True)
class Recipe:
    model: dict          # "name" and ModelConfig options
    train: TrainConfig
    augmentation: dict   # DataConfig fields: mean_image, lighting, translate, augment
    pixel_scale: bool    # §2: raw 0..255 pixels minus the mean, no division by a std


RECIPES = {
    "paper": Recipe({"name": "paper"}, TrainConfig(out="runs/alexnet"),
                    {"mean_image": True, "lighting": 0.1, "translate": 0}, pixel_scale=True),
    # Fashion-MNIST, departures from the paper and why:
    "fashion-mnist": Recipe(
        {"name": "small",    # 28x28 inputs: the paper's topology at small-image widths (model.py)
         "init": "kaiming"},  # N(0, 0.01) with biases 1 leaves this net's loss flat (BENCHMARKS.md)
        TrainConfig(
            epochs=14,            # what fits in ~5 minutes of training on 2 cores
            batch_size=128,       # §5
            lr=0.04,              # with He init; tuned on the validation split (docs/BENCHMARKS.md)
            schedule="onecycle",  # a fixed short budget: warm-up + cosine to zero, no plateaus to wait for
            warmup_epochs=1.0,
            label_smoothing=0.1,  # not in the paper; with lr 0.04: +0.2 points in ten epochs (BENCHMARKS.md)
            amp="bf16",           # bf16 autocast: faster than fp32 on CPUs with AVX512-BF16/AMX
            out="runs/fashion-mnist",
        ),
        # Per-channel mean (the 28x28 mean image gains nothing here); mirrors without
        # random shifts: in runs this short shifts cost a point (BENCHMARKS.md); no PCA
        # lighting on grayscale.
        {"mean_image": False, "lighting": 0.0, "translate": 0},
        pixel_scale=False,  # inputs divided by the std: He init expects unit-scale inputs
    ),
}


def data_defaults(data: str) -> DataConfig:
    if is_fashion_mnist(DataConfig(name=data)):
        return DataConfig(name=FASHION_MNIST, resize=28, mean=FASHION_MNIST_MEAN, std=FASHION_MNIST_STD)
    return DataConfig(name=data)


def default_recipe(data: str) -> str:
    return "fashion-mnist" if is_fashion_mnist(DataConfig(name=data)) else "paper"


def resolve(data: str, model: dict, data_overrides: dict, train_overrides: dict,
            recipe: str | None = None) -> RunConfig:
    """The recipe (default: the data's) with the user's choices on top (None: not given).

    Model options of the recipe apply only to the recipe's own variant: `--model paper`
    under the fashion-mnist recipe gets the paper's init and 227 input, not small's.
    """
    r = RECIPES[recipe or default_recipe(data)]
    name = model.get("name") or r.model["name"]
    options = {k: v for k, v in r.model.items() if k != "name"} if name == r.model["name"] else {}
    options.update({k: v for k, v in model.items() if k != "name" and v is not None})
    try:
        model_cfg: ModelConfig = model_config(name, **options)
    except ValueError as e:
        raise UserError(str(e)) from e
    data_cfg = dataclasses.replace(data_defaults(data), **r.augmentation)
    if r.pixel_scale:
        data_cfg = dataclasses.replace(data_cfg, std=(1.0,) * data_cfg.channels)
    if not is_fashion_mnist(data_cfg) and model_cfg.input_size < 224:
        # keep §2's 256 : 227 margin for random crops of small inputs
        data_cfg = dataclasses.replace(data_cfg, resize=round(model_cfg.input_size * 256 / 227))
    data_cfg = dataclasses.replace(data_cfg, **{k: v for k, v in data_overrides.items() if v is not None})
    train_cfg = dataclasses.replace(r.train, **{k: v for k, v in train_overrides.items() if v is not None})
    return RunConfig(model=model_cfg, data=data_cfg, train=train_cfg)
