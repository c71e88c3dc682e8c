"""Recipes (how to train) and data defaults (how to read the data).

Recipes:
- `paper`: the 2012 recipe exactly. The `paper` model
  with the paper's init; the per-pixel mean image (§2); random 227 crops of the 256
  image, mirrors and PCA lighting (§4.1); SGD batch 128, lr 0.01, momentum 0.9 with the
  paper's update rule, weight decay 5e-4, lr / 10 when the validation error stops
  improving, three times, then stop (at most 90 epochs) (§5).
- `folder` (the default for image folders): `paper` with Caffe's init and the lr scaled
  by sqrt(batch / 128), so that it trains at the batch sizes users have (4 to 128+).
- `fashion-mnist` (the default for Fashion-MNIST): five minutes of training on the machine
  that runs it (a budget: the epochs that fit are measured at the start, plan.py); every
  departure from the paper is listed below with its reason.

A recipe sets the model, the training and the augmentation; the data decides how it is
read (files, channels, per-channel statistics, stored size).
"""

from __future__ import annotations

import dataclasses
import math

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
    # The batch size the recipe's lr is for: another --batch-size scales it by
    # sqrt(batch / lr_batch) (Krizhevsky 2014, "One weird trick"), unless --lr is given.
    # None: never scaled (the paper's lr whatever the batch).
    lr_batch: int | None = None


RECIPES = {
    # §5 trained in fp32: amp "off" keeps the arithmetic the paper's (--amp auto: bf16 where faster)
    "paper": Recipe({"name": "paper"}, TrainConfig(amp="off", out="runs/alexnet"),
                    {"mean_image": True, "lighting": 0.1, "translate": 0}, pixel_scale=True),
    # The default for a folder: the paper's recipe with two departures that let it train at
    # any batch size (docs/FIDELITY.md, "The image-folder default"): Caffe's init (biases 0.1,
    # fc6/fc7 std 0.005), and the lr 0.01 scaled by sqrt(batch / 128). Measured on real
    # photos, the paper's recipe diverged at batch 4 and 32; with a linearly scaled lr the
    # paper's init still blew up at batch 32 and Caffe's crawled at batch 4.
    "folder": Recipe({"name": "paper", "init": "caffe"}, TrainConfig(out="runs/alexnet"),
                     {"mean_image": True, "lighting": 0.1, "translate": 0}, pixel_scale=True, lr_batch=128),
    # Fashion-MNIST, departures from the paper and why:
    "fashion-mnist": Recipe(
        {"name": "small",    # 28x28 inputs: the paper's topology at small-image widths (model.py)
         "init": "kaiming",  # N(0, 0.01) with biases 1 leaves this net's loss flat (BENCHMARKS.md)
         "width": 0.75,      # 28-72-108-108-72 / 576: 1.4x the images/s of width 1, the same
                             # accuracy in the same time (91.99 / 91.94%, BENCHMARKS.md)
         "dropout": 0.25},   # §4.2 says 0.5; in runs this short less is as good (BENCHMARKS.md)
        TrainConfig(
            budget=300.0,         # five minutes of training on whatever machine runs it (plan.py)
            epochs=30,            # the most a budget may plan (a GPU fits many more in 5 minutes)
            val_every=0,          # validate once, at the end: the budget goes to training
            eval_mirror=True,     # §4.1's test-time mirrors: +0.1 to +0.5 points (BENCHMARKS.md)
            batch_size=96,        # §5 says 128; 96 gave +0.2 points with lr 0.06 (BENCHMARKS.md)
            lr=0.06,              # with He init; +0.6 points over 0.04 in 6 epochs (BENCHMARKS.md)
            schedule="onecycle",  # a fixed short budget: warm-up + cosine to zero, no plateaus to wait for
            warmup_epochs=0.5,
            label_smoothing=0.1,  # not in the paper; with lr 0.04: +0.2 points in ten epochs (BENCHMARKS.md)
            amp="auto",           # fp32 or bf16, whichever trains faster on this machine (plan.py)
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
    return "fashion-mnist" if is_fashion_mnist(DataConfig(name=data)) else "folder"


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
    if r.lr_batch and train_overrides.get("lr") is None:
        train_cfg = dataclasses.replace(train_cfg, lr=r.train.lr * math.sqrt(train_cfg.batch_size / r.lr_batch))
    if train_overrides.get("epochs") is not None:  # --epochs N wins over any budget
        train_cfg = dataclasses.replace(train_cfg, budget=None)
    if train_cfg.schedule == "plateau" and train_cfg.val_every != 1:
        raise UserError("--schedule plateau decides after every epoch's validation: it needs --val-every 1")
    return RunConfig(model=model_cfg, data=data_cfg, train=train_cfg)
