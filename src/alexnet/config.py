"""Configuration: what a model is (ModelConfig) and how a run trains it (TrainConfig).

Both are frozen dataclasses. Checkpoints carry them as plain dicts, so a checkpoint alone
rebuilds its model (nanoGPT style). Defaults cite the section of the paper they come from
(../shared/PAPER.md is the reference sheet); departures say so.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

ACTIVATIONS = ("relu", "tanh")
POOLINGS = ("overlap", "nonoverlap")
INITS = ("paper", "caffe", "torch", "kaiming")
DROPOUT_PLACEMENTS = ("output", "input")


class _Dictable:
    """to_dict / from_dict for the frozen config dataclasses (JSON and checkpoints)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})  # ignores retired fields


@dataclass(frozen=True)
class ModelConfig(_Dictable):
    name: str = "paper"          # variant: paper | paper-ungrouped | owt | small (model.ARCHITECTURES)
    num_classes: int = 1000      # fc8 outputs: the 1000 ILSVRC classes (§2)
    in_channels: int = 3         # RGB (§3.5); 1 for grayscale data such as Fashion-MNIST
    input_size: int = 227        # §3.5 says 224, but 11x11/4 gives 55x55 only from 227
    activation: str = "relu"     # §3.1 ReLU; "tanh" is the Figure 1 comparison
    lrn: bool = True             # §3.3 LRN after the ReLUs of conv1 and conv2
    groups: bool = True          # §3.2 two towers: conv2/4/5 see half their input (groups=2)
    pooling: str = "overlap"     # §3.4 "overlap" = window 3 stride 2; "nonoverlap" = 2/2
    dropout: float = 0.5         # §4.2 dropout probability in fc6 and fc7
    dropout_placement: str = "output"  # §4.2 on fc6/fc7 outputs; "input" = torchvision's order
    width: float = 1.0           # multiplier on every conv and hidden fc width (1.0 = the paper)
    init: str = "paper"          # §5 N(0, 0.01), bias 1 in conv2/4/5, fc6, fc7; see model.init_weights

    def __post_init__(self):
        checks = [
            (self.activation in ACTIVATIONS, f"activation must be one of {ACTIVATIONS}"),
            (self.pooling in POOLINGS, f"pooling must be one of {POOLINGS}"),
            (self.init in INITS, f"init must be one of {INITS}"),
            (self.dropout_placement in DROPOUT_PLACEMENTS,
             f"dropout_placement must be one of {DROPOUT_PLACEMENTS}"),
            (0.0 <= self.dropout < 1.0, "dropout must be in [0, 1)"),
            (self.width > 0, "width must be positive"),
            (self.num_classes >= 1, "num_classes must be at least 1"),
            (self.in_channels >= 1, "in_channels must be at least 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"{message}, got {self}")



@dataclass(frozen=True)
class DataConfig(_Dictable):
    name: str = "fashion-mnist"  # "fashion-mnist" or the path of an ImageNet-style folder
    data_dir: str | None = None  # where Fashion-MNIST's IDX files are (default: Debian's folder)
    download: bool = False       # let torchvision download Fashion-MNIST (needs a network)
    resize: int = 256            # §2 shorter side to 256, then the central 256x256 patch
    # §2: subtract the training set's per-pixel mean image (computed once, cached; see
    # meanimage.py). Off: subtract the per-channel `mean` below instead.
    mean_image: bool = True
    # Per-channel mean and std in 0..255 pixel units. The paper divides by nothing
    # (std 1); the per-channel mean is the documented stand-in for the mean image.
    mean: tuple[float, ...] = (123.68, 116.78, 103.94)  # ImageNet RGB mean
    std: tuple[float, ...] = (1.0, 1.0, 1.0)
    augment: bool = True         # §4.1 random crops and horizontal mirrors for training
    # Random shifts of up to this many pixels when the crop is the whole image (small
    # images, where there is no 256 -> 227 margin to crop from).
    translate: int = 0
    # §4.1 PCA lighting: std of alpha (0 = off; RGB only) and the RGB covariance's
    # eigenvalues / eigenvectors (columns), for RGB in [0, 1]: ImageNet's by default,
    # `alexnet pca DATA` computes them for other data.
    lighting: float = 0.1
    pca_eigval: tuple[float, ...] = (0.2175, 0.0188, 0.0045)
    pca_eigvec: tuple[tuple[float, ...], ...] = ((-0.5675, 0.7192, 0.4009),
                                                 (-0.5808, -0.0045, -0.8140),
                                                 (-0.5836, -0.6948, 0.4203))
    workers: int = -1            # DataLoader workers for image folders; -1 = choose for the machine
    # ILSVRC's flat val/ folder: its ground truth (LOC_val_solution.csv or the devkit's
    # ILSVRC2012_validation_ground_truth.txt) and, for the latter, the synset order
    # (meta.mat or wnids in ID order). Default: looked for in the data folder (imagenet.py).
    val_labels: str | None = None
    synsets: str | None = None

    @property
    def channels(self) -> int:
        """Image channels the data is read with: one mean per channel."""
        return len(self.mean)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DataConfig":
        tuples = {"mean": tuple, "std": tuple, "pca_eigval": tuple,
                  "pca_eigvec": lambda rows: tuple(tuple(r) for r in rows)}
        return super().from_dict({k: tuples[k](v) if k in tuples else v for k, v in d.items()})


@dataclass(frozen=True)
class TrainConfig(_Dictable):
    epochs: int = 90             # §5 "roughly 90 cycles" through the training set
    # Optimizer steps in all; the last epoch stops early when it is not a multiple of the
    # epoch's steps (None: every step of `epochs`). A budget sets it (plan.py).
    steps: int | None = None
    batch_size: int = 128        # §5
    lr: float = 0.01             # §5 the same for every layer
    momentum: float = 0.9        # §5
    weight_decay: float = 5e-4   # §5
    # "plateau" (§5): lr / 10 when the validation error stops improving, `lr_drops` times,
    # then stop at the next plateau. "step": lr / 10 every `step_epochs` (Caffe/torchvision,
    # fixed length). "onecycle": linear warm-up then cosine to zero, for short fixed budgets.
    schedule: str = "plateau"
    plateau_patience: int = 3    # epochs without improvement before a drop (not in the paper: ours)
    plateau_threshold: float = 0.002  # an improvement is a fall of 0.2 points of top-1 error
    lr_drops: int = 3            # §5 "reduced three times prior to termination"
    step_epochs: int = 30        # epochs between /10 drops for "step" (3 drops in 90 epochs)
    # "paper": §5's momentum rule across drops (velocity in weight units); "pytorch":
    # torch.optim.SGD's (momentum in gradient units). Same while the lr is constant.
    momentum_rule: str = "paper"
    warmup_epochs: float = 0.0   # linear warm-up length for "onecycle"
    label_smoothing: float = 0.0  # 0 in the paper
    # autocast dtype: "off" (fp32), "bf16" or "fp16" (fp16: CUDA, with a loss scaler), or
    # "auto": decided at the start of the run on this machine (plan.py) and recorded here
    # in the run's config.json as what it chose, so that the run can be repeated exactly.
    amp: str = "auto"
    # Wall-clock seconds for the whole training (None: run `epochs`). Turned into the
    # number of epochs that fit, measured on this machine before the first step (plan.py);
    # config.json records the planned epochs. An explicit --epochs wins over a budget.
    budget: float | None = None
    # Validate every this many epochs; 0: only after the last epoch (saves the budget's
    # time where nothing reads the curve; the plateau schedule needs every epoch).
    val_every: int = 1
    # Evaluate each image and its mirror, softmax averaged: §4.1's test-time mirrors without
    # its crops (for inputs with no margin to crop, such as Fashion-MNIST's 28x28).
    eval_mirror: bool = False
    channels_last: bool = True   # NHWC memory layout: faster convolutions on CPU and GPU
    compile: bool = False        # torch.compile the training step's model (pays off on GPUs)
    device: str = "auto"         # auto | cpu | cuda | cuda:N
    seed: int = 0
    out: str = "runs/alexnet"
    log_every: int = 20          # progress-bar refresh and health check, in steps
    # Warn that the run is not learning when its training loss has not fallen 0.1 below
    # ln C by this step (health.py: learning runs leave it by step 60-80; flat ones never)
    flat_steps: int = 300


@dataclass(frozen=True)
class RunConfig:
    """Everything a training run was started with; saved as config.json beside its outputs."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    # What the run decided on its machine (plan.py): the precision and why, the budget's
    # plan. A record: the decisions themselves are in `train` (amp, epochs).
    plan: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model.to_dict(), "data": self.data.to_dict(),
                "train": self.train.to_dict(), "plan": self.plan}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        return cls(model=ModelConfig.from_dict(d["model"]), data=DataConfig.from_dict(d["data"]),
                   train=TrainConfig.from_dict(d["train"]), plan=dict(d.get("plan") or {}))
