"""Configuration: what a model is (ModelConfig), how the data is read (DataConfig) and how
a run trains (TrainConfig); RunConfig holds the three.

Frozen dataclasses. Checkpoints carry them as plain dicts, so a checkpoint alone rebuilds
its model (nanoGPT style). Each field's default and its help text (field metadata, which
the command line shows: apps/options.py derives `alexnet train`'s options from these fields) cite
the paper's section (docs/PAPER.md); departures say so. The recipes (recipes.py) set other
defaults on top; `alexnet train --help` shows each recipe's.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from typing_extensions import Self

ACTIVATIONS = ("relu", "tanh")
POOLINGS = ("overlap", "nonoverlap")
INITS = ("paper", "caffe", "torch", "kaiming")
DROPOUT_PLACEMENTS = ("output", "input")
SCHEDULES = ("plateau", "step", "onecycle")
MOMENTUM_RULES = ("paper", "pytorch")

FREEZE = ("none", "features", "fc6", "fc7")  # --freeze: up to which layer the weights stay (train.py)
AMP_MODES = ("auto", "off", "bf16", "fp16")  # "auto" is decided at the start of a run (plan.py)
LRN_KERNELS = ("auto", "fused", "torch")  # lrn.select_kernel: the LRN on the CPU


def cache_dir() -> Path:
    """Where alexnet keeps what it derives and can derive again (decompressed datasets, the
    built LRN kernel, fc7 indexes): $ALEXNET_CACHE, else $XDG_CACHE_HOME/alexnet or
    ~/.cache/alexnet."""
    root = os.environ.get("ALEXNET_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "alexnet"
    )
    return Path(root)


# torchvision's ImageNet statistics (RGB, in 0..255 pixel units): the per-channel stand-in
# for §2's mean image, and what torchvision's pretrained weights expect (interop.py).
IMAGENET_MEAN = tuple(255 * m for m in (0.485, 0.456, 0.406))
IMAGENET_STD = tuple(255 * s for s in (0.229, 0.224, 0.225))


def option(default: Any, help: str, cli: bool = True, **argparse_kw: Any) -> Any:
    """A config field with its help text; cli=False: not a command-line option (set by the
    data, the recipe or another option). argparse_kw (choices, metavar, flag) go to apps/options.py."""
    return field(default=default, metadata={"help": help, "cli": cli, **argparse_kw})


def _check(config: object, checks: list[tuple[bool, str, str]]) -> None:
    """ValueError naming the field and its value for the first failed check."""
    for ok, name, rule in checks:
        if not ok:
            raise ValueError(f"{name} {rule}, got {getattr(config, name)!r}")


class _Dictable:
    """to_dict / from_dict for the frozen config dataclasses (JSON and checkpoints)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Self:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})  # ignores retired fields


@dataclass(frozen=True)
class ModelConfig(_Dictable):
    name: str = option(
        "paper",
        "variant: paper (§3.5), paper-ungrouped, owt (torchvision's), small (28x28 inputs); variants.ARCHITECTURES",
        flag="--model",
    )
    num_classes: int = option(1000, "fc8 outputs: the 1000 ILSVRC classes (§2); training takes the data's", cli=False)
    in_channels: int = option(
        3, "RGB (§3.5); 1 for grayscale data such as Fashion-MNIST (training takes the data's)", cli=False
    )
    input_size: int = option(227, "input height and width: §3.5 says 224, but 11x11/4 gives 55x55 only from 227")
    activation: str = option("relu", "§3.1 ReLU; tanh is Figure 1's comparison", choices=ACTIVATIONS)
    lrn: bool = option(True, "§3.3 local response normalisation after the ReLUs of conv1 and conv2")
    groups: bool = option(True, "§3.2 two towers: conv2/4/5 see half their input (--no-groups: one tower)")
    pooling: str = option("overlap", "§3.4 overlap = window 3 stride 2; nonoverlap = 2/2", choices=POOLINGS)
    dropout: float = option(0.5, "§4.2 dropout probability in fc6 and fc7")
    dropout_placement: str = option(
        "output", "§4.2 on fc6/fc7's outputs; input = torchvision's order", choices=DROPOUT_PLACEMENTS
    )
    width: float = option(1.0, "multiplier on every conv and hidden fc width (1 = the paper's)")
    init: str = option(
        "paper",
        "weights: paper = §5's N(0, 0.01), biases 1 in conv2/4/5, fc6, fc7; caffe, torch, kaiming (model.init_weights)",
        choices=INITS,
    )

    def __post_init__(self) -> None:
        _check(
            self,
            [
                (self.activation in ACTIVATIONS, "activation", f"must be one of {ACTIVATIONS}"),
                (self.pooling in POOLINGS, "pooling", f"must be one of {POOLINGS}"),
                (self.init in INITS, "init", f"must be one of {INITS}"),
                (
                    self.dropout_placement in DROPOUT_PLACEMENTS,
                    "dropout_placement",
                    f"must be one of {DROPOUT_PLACEMENTS}",
                ),
                (0.0 <= self.dropout < 1.0, "dropout", "must be in [0, 1)"),
                (self.width > 0, "width", "must be positive"),
                (self.num_classes >= 1, "num_classes", "must be at least 1"),
                (self.in_channels >= 1, "in_channels", "must be at least 1"),
            ],
        )


@dataclass(frozen=True)
class DataConfig(_Dictable):
    name: str = option(
        "fashion-mnist",
        "fashion-mnist, a folder with train/<class>/ and val/<class>/ (ImageNet-style), or a store from `alexnet pack`",
        flag="--data",
    )
    data_dir: str | None = option(
        None, "folder with Fashion-MNIST's IDX files (default: Debian's /usr/share/datasets/fashion-mnist)"
    )
    download: bool = option(False, "let torchvision download Fashion-MNIST (needs a network)")
    resize: int = option(256, "§2 shorter side to this, then the central square")
    # §2: subtract the training set's per-pixel mean image (computed once, cached; stats.py).
    mean_image: bool = option(
        True, "§2 subtract the training set's per-pixel mean image; --no-mean-image: the per-channel mean"
    )
    # Per-channel mean and std in 0..255 pixel units. The paper divides by nothing (std 1);
    # the per-channel mean is the documented stand-in for the mean image.
    mean: tuple[float, ...] = option(IMAGENET_MEAN, "per-channel mean (0..255)", cli=False)
    std: tuple[float, ...] = option((1.0, 1.0, 1.0), "per-channel std (0..255; §2: none, 1)", cli=False)
    augment: bool = option(True, "§4.1 random crops and horizontal mirrors for training")
    translate: int = option(
        0,
        "random shifts of up to N pixels when the crop is the whole image "
        "(small in-memory images, no 256 -> 227 margin)",
    )
    # §4.1 PCA lighting: the RGB covariance's eigenvalues / eigenvectors (columns), for RGB in
    # [0, 1]: ImageNet's by default; `alexnet pca DATA` computes them for other data (--pca).
    lighting: float = option(0.1, "§4.1 PCA lighting: std of alpha (0 = off; RGB only)")
    pca_eigval: tuple[float, ...] = option((0.2175, 0.0188, 0.0045), "§4.1 eigenvalues", cli=False)
    pca_eigvec: tuple[tuple[float, ...], ...] = option(
        ((-0.5675, 0.7192, 0.4009), (-0.5808, -0.0045, -0.8140), (-0.5836, -0.6948, 0.4203)),
        "§4.1 eigenvectors",
        cli=False,
    )
    workers: int = option(-1, "DataLoader workers for image folders (-1: the cores less one)")
    # ILSVRC's flat val/ folder: its ground truth and, for the devkit's, the synset order.
    # Default: looked for in the data folder (imagenet.py).
    val_labels: str | None = option(
        None,
        "ground truth of a flat val/ folder: LOC_val_solution.csv or ILSVRC2012_validation_ground_truth.txt",
        metavar="FILE",
    )
    synsets: str | None = option(
        None,
        "synset order for the devkit's ground truth: meta.mat or one wnid per line in ILSVRC2012_ID order",
        metavar="FILE",
    )
    limit_train: int | None = option(None, "read only this many training images (a fixed subset)", metavar="N")
    limit_val: int | None = option(None, "read only this many validation images", metavar="N")
    strict: bool = option(
        False, "stop at the first unreadable training file (--no-strict: skip it and list it in unreadable.txt)"
    )

    @property
    def channels(self) -> int:
        """Image channels the data is read with: one mean per channel."""
        return len(self.mean)

    def __post_init__(self) -> None:
        _check(
            self,
            [
                (self.resize >= 1, "resize", "must be at least 1"),
                (len(self.std) == len(self.mean), "std", "needs one value per channel of mean"),
                (all(v > 0 for v in self.std), "std", "must be positive"),
                (self.lighting >= 0, "lighting", "must be at least 0"),
                (self.translate >= 0, "translate", "must be at least 0"),
                (self.limit_train is None or self.limit_train >= 1, "limit_train", "must be at least 1"),
                (self.limit_val is None or self.limit_val >= 1, "limit_val", "must be at least 1"),
            ],
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DataConfig:
        tuples = {
            "mean": tuple,
            "std": tuple,
            "pca_eigval": tuple,
            "pca_eigvec": lambda rows: tuple(tuple(r) for r in rows),
        }
        return super().from_dict({k: tuples[k](v) if k in tuples else v for k, v in d.items()})


OPTIMISATION, RUN = "optimisation", "run"  # TrainConfig's two option groups on the command line


@dataclass(frozen=True)
class TrainConfig(_Dictable):
    epochs: int = option(
        90,
        "§5 'roughly 90 cycles' through the training set; wins over a budget (with a budget: the most it may plan)",
        group=OPTIMISATION,
    )
    steps: int | None = option(
        None,
        "stop after S optimizer steps in all, the last epoch early (what a "
        "budget plans; with --epochs, repeats a budgeted run)",
        metavar="S",
        group=OPTIMISATION,
    )
    budget: float | None = option(
        None,
        "train for this long on this machine (300s, 5m, 1.5h): the steps "
        "that fit are measured before the first step and revised after each "
        "epoch at the run's pace (plan.py)",
        metavar="TIME",
        group=OPTIMISATION,
    )
    batch_size: int = option(128, "§5; the global batch, split over torchrun's processes", group=OPTIMISATION)
    lr: float = option(0.01, "§5 the same for every layer", group=OPTIMISATION)
    momentum: float = option(0.9, "§5", group=OPTIMISATION)
    weight_decay: float = option(5e-4, "§5", group=OPTIMISATION)
    schedule: str = option(
        "plateau",
        "plateau (§5): lr / 10 when the validation error stops improving, "
        "lr_drops times, then stop; step: / 10 every step_epochs (Caffe, torchvision); "
        "onecycle: warm-up then cosine to zero",
        choices=SCHEDULES,
        group=OPTIMISATION,
    )
    plateau_patience: int = option(
        3, "epochs without improvement before a drop (--schedule plateau; not in the paper: ours)", group=OPTIMISATION
    )
    plateau_threshold: float = option(
        0.002, "an improvement is a fall of the top-1 error by this much (--schedule plateau; ours)", group=OPTIMISATION
    )
    plateau_min_steps: int = option(
        0,
        "optimiser steps at each learning rate before the plateau rule may drop it (--schedule plateau; "
        "0: §5's rule, which judges every epoch; ours)",
        group=OPTIMISATION,
    )
    lr_drops: int = option(3, "§5 'reduced three times prior to termination' (--schedule plateau)", group=OPTIMISATION)
    step_epochs: int = option(30, "epochs between / 10 drops (--schedule step)", group=OPTIMISATION)
    momentum_rule: str = option(
        "paper",
        "across an lr drop: paper = §5's velocity in weight units; "
        "pytorch = torch.optim.SGD's (same while the lr is constant)",
        choices=MOMENTUM_RULES,
        group=OPTIMISATION,
    )
    warmup_epochs: float = option(0.0, "linear warm-up length (--schedule onecycle)", group=OPTIMISATION)
    label_smoothing: float = option(0.0, "not in the paper (0)", group=OPTIMISATION)
    val_every: int = option(
        1,
        "validate every N epochs and after the last; 0: after the last only (the plateau schedule needs 1)",
        metavar="N",
        group=OPTIMISATION,
    )
    eval_mirror: bool = option(
        False,
        "validate on each image and its mirror, softmax averaged: §4.1's test-time mirrors without its crops",
        group=OPTIMISATION,
    )
    amp: str = option(
        "auto",
        "autocast: off = fp32 (§5); auto = the faster of fp32 and bf16, timed at the start where "
        "bf16 is native (CPU, CUDA 8.0+), else fp16 with a loss scaler on older CUDA cards; "
        "recorded in config.json",
        choices=AMP_MODES,
        group=RUN,
    )
    channels_last: bool = option(True, "NHWC memory layout: faster convolutions on CPU and GPU", group=RUN)
    lrn_kernel: str = option(
        "auto",
        "the LRN on the CPU (fp32, bf16): fused = one pass in C, built at the start with the machine's "
        "compiler (lrn.c); torch = torch operations; auto = fused where it builds, passes its check and "
        "measures faster; recorded in config.json",
        choices=LRN_KERNELS,
        group=RUN,
    )
    remeasure: bool = option(
        False,
        "measure the machine again (precision, LRN kernel, a budget's step and validation times) instead "
        "of reading the cached measurements of an earlier run of the same model and batch on it",
        group=RUN,
    )
    compile: bool = option(
        False,
        "torch.compile the model (for GPUs: on a CPU it trained slower than eager, docs/BENCHMARKS.md)",
        group=RUN,
    )
    tf32: bool = option(
        False,
        "CUDA (Ampere and later): TF32 tensor cores for the matmuls and convolutions that run in fp32; "
        "--no-tf32: true fp32, as §5 (the paper recipe's)",
        group=RUN,
    )
    deterministic: bool = option(
        False,
        "CUDA: deterministic algorithms and no cuDNN autotuning (slower), for a resume that repeats "
        "the run bit for bit on the same GPU; CPU runs are deterministic already",
        group=RUN,
    )
    device: str = option("auto", "auto (CUDA, else Apple MPS, else CPU), cpu, cuda, cuda:N or mps", group=RUN)
    seed: int = option(0, "initial weights, data order and every step's random draws", group=RUN)
    out: str = option("runs/alexnet", "run directory: config.json, metrics.csv, checkpoints", group=RUN)
    log_every: int = option(20, "progress and health checks every N steps", metavar="N", group=RUN)
    flat_steps: int = option(
        300,
        "warn if the training loss is still within 0.1 of chance (ln C) after N steps (health.py)",
        metavar="N",
        group=RUN,
    )
    init_from: str | None = option(
        None,
        "fine-tune: start from this checkpoint's weights (ours, or alexnet import-torchvision's) and its "
        "preprocessing; the last layer is new where the data's classes differ",
        metavar="CKPT",
        group=RUN,
    )
    freeze: str = option(
        "none",
        "with --init-from: layers that keep the checkpoint's weights: features (every convolution: "
        "train the classifier only), fc6 (and fc6), fc7 (all but the last layer)",
        choices=FREEZE,
        group=RUN,
    )
    resume: str | None = option(
        None,
        "continue from this checkpoint; no value or auto: from OUT/last.pt if it exists, else start "
        "anew (one command for a job's first start and its restarts)",
        metavar="CKPT",
        nargs="?",
        const="auto",
        group=RUN,
    )
    ddp_bf16: bool = option(
        False, "under torchrun: compress the gradient all-reduce to bf16 (docs/SCALING.md)", group=RUN
    )

    def __post_init__(self) -> None:
        _check(
            self,
            [
                (self.schedule in SCHEDULES, "schedule", f"must be one of {SCHEDULES}"),
                (self.momentum_rule in MOMENTUM_RULES, "momentum_rule", f"must be one of {MOMENTUM_RULES}"),
                (self.amp in AMP_MODES, "amp", f"must be one of {AMP_MODES}"),
                (self.lrn_kernel in LRN_KERNELS, "lrn_kernel", f"must be one of {LRN_KERNELS}"),
                (self.epochs >= 1, "epochs", "must be at least 1"),
                (self.steps is None or self.steps >= 1, "steps", "must be at least 1"),
                (self.batch_size >= 1, "batch_size", "must be at least 1"),
                (self.lr > 0, "lr", "must be positive"),
                (0 <= self.momentum < 1, "momentum", "must be in [0, 1)"),
                (self.weight_decay >= 0, "weight_decay", "must be at least 0"),
                (self.warmup_epochs >= 0, "warmup_epochs", "must be at least 0"),
                (0 <= self.label_smoothing < 1, "label_smoothing", "must be in [0, 1)"),
                (self.budget is None or self.budget > 0, "budget", "must be positive"),
                (self.val_every >= 0, "val_every", "must be at least 0"),
                (self.step_epochs >= 1, "step_epochs", "must be at least 1"),
                (self.lr_drops >= 0, "lr_drops", "must be at least 0"),
                (self.plateau_min_steps >= 0, "plateau_min_steps", "must be at least 0"),
                (self.log_every >= 1, "log_every", "must be at least 1"),
                (self.flat_steps >= 1, "flat_steps", "must be at least 1"),
                (self.freeze in FREEZE, "freeze", f"must be one of {FREEZE}"),
                (self.freeze == "none" or self.init_from is not None, "freeze", "needs --init-from CKPT"),
            ],
        )


@dataclass(frozen=True)
class RunConfig:
    """Everything a training run was started with; saved as config.json beside its outputs
    (run options such as --resume and --limit-train included)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        """The three configs; a run adds what it decided on its machine as "plan" (run/plan.py)."""
        return {"model": self.model.to_dict(), "data": self.data.to_dict(), "train": self.train.to_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        return cls(
            model=ModelConfig.from_dict(d["model"]),
            data=DataConfig.from_dict(d["data"]),
            train=TrainConfig.from_dict(d["train"]),
        )
