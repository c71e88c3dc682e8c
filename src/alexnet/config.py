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
    # Per-channel mean and std in 0..255 pixel units. The paper subtracts the training
    # set's mean image and does not divide (§2); the per-channel mean is the usual
    # stand-in (issue 3 adds the per-pixel mean).
    mean: tuple[float, ...] = (123.68, 116.78, 103.94)  # ImageNet RGB mean
    std: tuple[float, ...] = (1.0, 1.0, 1.0)            # 1 = no division, as in the paper
    augment: bool = True         # §4.1 random crops and horizontal mirrors for training
    # In-memory (small-image) data: random translation by up to this many pixels plus a
    # mirror, the small-image analogue of §4.1's random 227 crops of the 256 image.
    translate: int = 2
    workers: int = -1            # DataLoader workers for image folders; -1 = choose for the machine

    @property
    def channels(self) -> int:
        """Image channels the data is read with: one mean per channel."""
        return len(self.mean)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DataConfig":
        return super().from_dict({k: (tuple(v) if k in ("mean", "std") else v) for k, v in d.items()})


@dataclass(frozen=True)
class TrainConfig(_Dictable):
    epochs: int = 90             # §5 "roughly 90 cycles" through the training set
    batch_size: int = 128        # §5
    lr: float = 0.01             # §5 the same for every layer
    momentum: float = 0.9        # §5
    weight_decay: float = 5e-4   # §5
    # "step": lr / 10 every `step_epochs` (Caffe/torchvision style stand-in for the paper's
    # "divide by 10 when the validation error stops improving", §5, which is issue 3);
    # "onecycle": linear warm-up then cosine decay to zero, for short fixed-length runs.
    schedule: str = "step"
    step_epochs: int = 30        # epochs between /10 drops for "step" (3 drops in 90 epochs, §5)
    warmup_epochs: float = 0.0   # linear warm-up length for "onecycle"
    label_smoothing: float = 0.0  # 0 in the paper
    amp: str = "off"             # autocast dtype: "off" (fp32), "bf16" or "fp16" (fp16 CUDA only)
    channels_last: bool = True   # NHWC memory layout: faster convolutions on CPU and GPU
    device: str = "auto"         # auto | cpu | cuda | cuda:N
    seed: int = 0
    out: str = "runs/alexnet"
    log_every: int = 20          # progress-bar refresh, in steps


@dataclass(frozen=True)
class RunConfig:
    """Everything a training run was started with; saved as config.json beside its outputs."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model.to_dict(), "data": self.data.to_dict(),
                "train": self.train.to_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        return cls(model=ModelConfig.from_dict(d["model"]), data=DataConfig.from_dict(d["data"]),
                   train=TrainConfig.from_dict(d["train"]))
