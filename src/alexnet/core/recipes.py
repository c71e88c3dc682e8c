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
  that runs it (a budget: the epochs that fit are measured at the start, plan.py).

A recipe sets the model, the training and the augmentation; the data decides how it is
read (files, channels, per-channel statistics, stored size).

Every way a recipe departs from `paper` carries its reason in the recipe itself
(`Recipe.why`, keyed by config field). `departures(name)` compares the recipe's resolved
config with the paper recipe's on the same data, field by field; tools/departures.py renders
that as README's list (`python tools/departures.py --readme README.md`), and
tests/test_departures.py keeps the three in step.
"""

from __future__ import annotations

import dataclasses
import math

from ..config import DataConfig, ModelConfig, RunConfig, TrainConfig
from ..data.fashion import FASHION_MNIST, FASHION_MNIST_MEAN, FASHION_MNIST_STD, is_fashion_mnist
from ..run.errors import UserError
from ..run.health import FLAT_STEPS
from .variants import model_config


@dataclasses.dataclass(frozen=True)
class Recipe:
    model: dict  # "name" and ModelConfig options
    train: TrainConfig
    augmentation: dict  # DataConfig fields: mean_image, lighting, translate, augment
    pixel_scale: bool  # §2: raw 0..255 pixels minus the mean, no division by a std
    # The batch size the recipe's lr is for: another --batch-size scales it by
    # sqrt(batch / lr_batch) (Krizhevsky 2014, "One weird trick"), unless --lr is given.
    # None: never scaled (the paper's lr whatever the batch).
    lr_batch: int | None = None
    # Why the recipe departs from the paper's: one line per config field that differs from
    # the `paper` recipe's ("model.init", "data.std", "train.lr", or "lr_batch" for the
    # attribute above), with the evidence it rests on. tests/test_departures.py fails when
    # a field differs without a reason here, or a reason names a field that does not differ.
    why: dict[str, str] = dataclasses.field(default_factory=dict)


# The folder recipe's floor under the plateau rule: steps at one lr before it is judged;
# health.FLAT_STEPS, the horizon by which a learning run has left chance (measured there).
PLATEAU_MIN_STEPS = FLAT_STEPS
FINETUNE_LR = 0.01  # §5's, at batch 16; measured against 0.001-0.1: docs/FIDELITY.md, "Fine-tuning"

RECIPES = {
    # §5 trained in fp32: amp "off" keeps the arithmetic the paper's (--amp auto: bf16 where faster)
    "paper": Recipe(
        {"name": "paper"},
        TrainConfig(amp="off", out="runs/alexnet"),
        {"mean_image": True, "lighting": 0.1, "translate": 0},
        pixel_scale=True,
    ),
    # The default for a folder: the paper's recipe with the departures that let it train at
    # any batch size (docs/FIDELITY.md, "The image-folder default").
    "folder": Recipe(
        {"name": "paper", "init": "caffe"},
        TrainConfig(out="runs/alexnet", plateau_min_steps=PLATEAU_MIN_STEPS, tf32=True),
        {"mean_image": True, "lighting": 0.1, "translate": 0},
        pixel_scale=True,
        lr_batch=128,
        why={
            "model.init": "Caffe's (biases 0.1, fc6/fc7 N(0, 0.005)): on real photos the paper's "
            "recipe diverged at batch 4 and 32, and the paper's init still blew up at "
            "batch 32 with a linearly scaled lr (docs/FIDELITY.md)",
            "lr_batch": 'Krizhevsky 2014 ("One weird trick"): 0.01 at batch 128, 0.005 at 32, 0.0018 '
            "at 4; the linear rule made Caffe's init crawl at batch 4 (docs/FIDELITY.md); "
            "--lr wins",
            "train.amp": "speed: the faster of fp32 and bf16, timed at the start where bf16 is native (a "
            "CPU that has it, a CUDA card of compute capability 8.0+), fp16 with a loss scaler on older "
            "CUDA cards (plan.py); §5's fp32 is --amp off",
            "train.tf32": "speed: on CUDA's tensor cores (Ampere and later), what runs in fp32 runs in "
            "TF32 (a 10-bit mantissa); §5's fp32 is --no-tf32; no effect on CPUs",
            "train.plateau_min_steps": "a folder of 24 photos has 6 steps an epoch: §5's rule cut its lr at "
            "steps 36 and 54, before its loss left chance, and it never learned; the "
            "rule now waits 300 steps at each lr (the health check's own horizon), which "
            "ImageNet's 10,000-step epochs never notice (docs/FIDELITY.md)",
        },
    ),
    # The default with --init-from: the network and its preprocessing come from the
    # checkpoint (train.py), the rest is a short run at a low lr (docs/FIDELITY.md, "Fine-tuning").
    "finetune": Recipe(
        {"name": "paper"},
        TrainConfig(
            out="runs/finetune",
            lr=FINETUNE_LR,
            schedule="onecycle",
            epochs=15,
            warmup_epochs=1.0,
            batch_size=16,
            val_every=1,
            tf32=True,
        ),
        {"mean_image": True, "lighting": 0.1, "translate": 0},
        pixel_scale=True,
        why={
            "train.schedule": "a short run of known length: warm-up, then a cosine to zero; no plateaus to wait for",
            "train.epochs": "a small folder's run: in the measurement the top-1 stopped rising by epoch 11-13 of 15",
            "train.warmup_epochs": "one epoch of linear warm-up, so the new last layer's first gradients do "
            "not shake the trained ones",
            "train.batch_size": "a small folder has few images: 16 gives 6 steps an epoch on 100 images; "
            "the lr stays §5's 0.01 (measured on 5 new Fashion-MNIST classes, 20 images each: 0.01 and "
            "0.03 gave 83.3% top-1 after 15 epochs, 0.003 72.6%, 0.001 50.7%, 0.1 diverged; from "
            "scratch 37.4%; docs/FIDELITY.md)",
            "train.amp": "speed: the faster of fp32 and bf16, timed at the start where bf16 is native (a "
            "CPU that has it, a CUDA card of compute capability 8.0+), fp16 with a loss scaler on older "
            "CUDA cards (plan.py); §5's fp32 is --amp off",
            "train.tf32": "speed: on CUDA's tensor cores (Ampere and later), what runs in fp32 runs in "
            "TF32 (a 10-bit mantissa); §5's fp32 is --no-tf32; no effect on CPUs",
        },
    ),
    "fashion-mnist": Recipe(
        {"name": "small", "init": "kaiming", "width": 0.75, "dropout": 0.25},
        TrainConfig(
            budget=300.0,
            epochs=30,
            val_every=0,
            eval_mirror=True,
            batch_size=96,
            lr=0.06,
            schedule="onecycle",
            warmup_epochs=0.5,
            label_smoothing=0.1,
            amp="auto",
            tf32=True,
            out="runs/fashion-mnist",
        ),
        # mirrors without random shifts (translate 0, as in the paper recipe): in runs this
        # short, shifts cost a point (docs/BENCHMARKS.md)
        {"mean_image": False, "lighting": 0.0, "translate": 0},
        pixel_scale=False,
        why={
            "model.name": "`small`: the paper's topology (LRN, overlapping pooling, groups, dropout) "
            "sized for 28x28 inputs (model.py)",
            "model.input_size": "the images' own 28x28; the `paper` model would need them upsampled to 227",
            "model.init": "He init: N(0, 0.01) with biases 1 leaves this network's loss flat at ln 10 "
            "(docs/BENCHMARKS.md)",
            "model.width": "28-72-108-108-72 convolutions, 576 fc units: 1.4x the images/s of width 1 "
            "and the same accuracy in the same time (91.99 against 91.94%, "
            "docs/BENCHMARKS.md)",
            "model.dropout": "§4.2 says 0.5; in runs this short 0.25 is as good (91.99% against 91.85% "
            "with 0.5, within one seed's noise; docs/BENCHMARKS.md)",
            "data.mean_image": "the per-channel mean, which every run in docs/BENCHMARKS.md used; the "
            "28x28 mean image has not been compared",
            "data.std": "inputs divided by their std: He init expects unit-scale inputs; raw pixels "
            "minus the mean did not train (9.85%, docs/BENCHMARKS.md)",
            "data.lighting": "§4.1's PCA lighting is for RGB; on grayscale it is off either way "
            "(augment.py), and 0 says so",
            "train.epochs": "an upper bound: the budget plans the epochs that fit, at most 30",
            "train.batch_size": "§5 says 128; 96 with a half-epoch warm-up (measured together) gave "
            "+0.2 points (docs/BENCHMARKS.md)",
            "train.lr": "with He init; +0.3 to +0.6 points over 0.04 (docs/BENCHMARKS.md)",
            "train.schedule": "a fixed short budget: warm-up, then a cosine to zero, with no plateaus to wait for",
            "train.warmup_epochs": "half an epoch of linear warm-up before the cosine; with batch 96 "
            "(measured together): +0.2 points (docs/BENCHMARKS.md)",
            "train.label_smoothing": "not in the paper; with lr 0.04 it gave +0.2 points over lr 0.02 "
            "without it, in ten epochs (docs/BENCHMARKS.md; the two changes "
            "were measured together)",
            "train.amp": "speed: the faster of fp32 and bf16, timed at the start where bf16 is native (a "
            "CPU that has it, a CUDA card of compute capability 8.0+), fp16 with a loss scaler on older "
            "CUDA cards (plan.py); §5's fp32 is --amp off",
            "train.tf32": "speed: on CUDA's tensor cores (Ampere and later), what runs in fp32 runs in "
            "TF32 (a 10-bit mantissa); §5's fp32 is --no-tf32; no effect on CPUs",
            "train.budget": "five minutes of training on whatever machine runs it (plan.py)",
            "train.val_every": "validate once, at the end: the budget goes to training (about ten "
            "validations of 3 s saved in a 10-epoch budget, docs/BENCHMARKS.md)",
            "train.eval_mirror": "§4.1's test-time mirrors without its crops (28x28 leaves no margin): "
            "+0.1 to +0.5 points (docs/BENCHMARKS.md)",
        },
    ),
}

# The data each recipe is for: departures() resolves a recipe, and the paper recipe it is
# compared with, on this data. Any folder name stands for "an image folder".
RECIPE_DATA = {"paper": "photos", "folder": "photos", "finetune": "photos", "fashion-mnist": FASHION_MNIST}

# Fields that may differ from the paper recipe's without being a departure from the paper.
# Both sides are resolved on the same data, so what the data alone sets (Fashion-MNIST's
# 28x28 stored size, its per-channel mean) is equal on both sides and never shows; these
# are the rest:
NOT_DEPARTURES = {
    "model.in_channels": "a variant's default; training sets it from the data (train.py)",
    "model.num_classes": "a variant's default; training sets it from the data's classes (train.py)",
    "train.out": "where the run writes, not how it trains",
}


def data_defaults(data: str) -> DataConfig:
    if is_fashion_mnist(DataConfig(name=data)):
        return DataConfig(name=FASHION_MNIST, resize=28, mean=FASHION_MNIST_MEAN, std=FASHION_MNIST_STD)
    return DataConfig(name=data)


def default_recipe(data: str) -> str:
    return "fashion-mnist" if is_fashion_mnist(DataConfig(name=data)) else "folder"


def resolve(
    data: str, model: dict, data_overrides: dict, train_overrides: dict, recipe: str | None = None
) -> RunConfig:
    """The recipe (default: the data's) with the user's choices on top (None: not given).

    Model options of the recipe apply only to the recipe's own variant: `--model paper`
    under the fashion-mnist recipe gets the paper's init and 227 input, not small's.
    """
    r = RECIPES[recipe or default_recipe(data)]
    name = model.get("name") or r.model["name"]
    options = {k: v for k, v in r.model.items() if k != "name"} if name == r.model["name"] else {}
    options.update({k: v for k, v in model.items() if k != "name" and v is not None})
    model_cfg: ModelConfig = model_config(name, **options)  # ValueError names a bad field
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


# --- departures from the paper, generated from the recipes ------------------------------


def _fields(cfg: RunConfig, recipe: Recipe) -> dict:
    """Every config field by its dotted name, and the recipe's lr rule as `lr_batch`."""
    values = {
        f"{part}.{f.name}": getattr(getattr(cfg, part), f.name)
        for part in ("model", "data", "train")
        for f in dataclasses.fields(getattr(cfg, part))
    }
    values["lr_batch"] = recipe.lr_batch
    return values


def differences(name: str) -> list[tuple[str, object, object]]:
    """(field, paper recipe's value, this recipe's value) for every field in which recipe
    `name`, resolved on the data it is for, differs from the paper recipe on the same
    data, in config order; NOT_DEPARTURES left out."""
    data = RECIPE_DATA[name]
    ours = _fields(resolve(data, {}, {}, {}, recipe=name), RECIPES[name])
    paper = _fields(resolve(data, {}, {}, {}, recipe="paper"), RECIPES["paper"])
    return [(k, paper[k], v) for k, v in ours.items() if v != paper[k] and k not in NOT_DEPARTURES]


def departures(name: str) -> list[tuple[str, object, object, str]]:
    """(field, paper value, recipe value, why) for each departure of recipe `name` from the
    paper recipe; why is "" where the recipe gives no reason (reason_problems says so)."""
    why = RECIPES[name].why
    return [(k, p, v, why.get(k, "")) for k, p, v in differences(name)]


def reason_problems(name: str) -> list[str]:
    """What is wrong with recipe `name`'s reasons: a departure without one, or one for a
    field that does not depart."""
    differ = {k for k, _, _ in differences(name)}
    why = RECIPES[name].why
    return [
        f"{name}: {k} differs from the paper recipe but has no reason in Recipe.why"
        for k in sorted(differ)
        if not why.get(k, "").strip()
    ] + [
        f"{name}: Recipe.why gives a reason for {k}, which does not differ from the paper recipe"
        for k in sorted(set(why) - differ)
    ]
