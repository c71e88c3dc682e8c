"""The named variants of model.py as tables: each one's convolutions, fc widths and the
ModelConfig fields it sets (ARCHITECTURES), and its resolved config (model_config).

No torch here: the command line lists the variants and resolves each recipe's model
config (`alexnet train --help`) before torch is imported; model.py builds the layers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..config import ModelConfig


@dataclass(frozen=True)
class ConvSpec:
    channels: int  # output channels at width 1.0
    kernel: int
    stride: int
    padding: int
    groups: int  # 2 = the paper's two-GPU split (§3.2)
    lrn: bool  # LRN after the ReLU (§3.3), when the model's `lrn` option is on
    pool: bool  # max-pool after (§3.4)


@dataclass(frozen=True)
class Architecture:
    convs: tuple[ConvSpec, ...]
    hidden: tuple[int, ...]  # fc6, fc7 widths at width 1.0
    adaptive_pool: int | None  # torchvision's AdaptiveAvgPool2d size; None = no pooling
    defaults: dict  # ModelConfig fields this variant sets differently


_PAPER_CONVS = (  # §3.5, Figure 2
    ConvSpec(96, 11, 4, 0, 1, lrn=True, pool=True),
    ConvSpec(256, 5, 1, 2, 2, lrn=True, pool=True),
    ConvSpec(384, 3, 1, 1, 1, lrn=False, pool=False),
    ConvSpec(384, 3, 1, 1, 2, lrn=False, pool=False),
    ConvSpec(256, 3, 1, 1, 2, lrn=False, pool=True),
)

ARCHITECTURES: dict[str, Architecture] = {
    "paper": Architecture(_PAPER_CONVS, (4096, 4096), None, {}),
    "paper-ungrouped": Architecture(_PAPER_CONVS, (4096, 4096), None, {"groups": False}),
    # torchvision/models/alexnet.py ("One weird trick", Krizhevsky 2014)
    "owt": Architecture(
        (
            ConvSpec(64, 11, 4, 2, 1, lrn=False, pool=True),
            ConvSpec(192, 5, 1, 2, 1, lrn=False, pool=True),
            ConvSpec(384, 3, 1, 1, 1, lrn=False, pool=False),
            ConvSpec(256, 3, 1, 1, 1, lrn=False, pool=False),
            ConvSpec(256, 3, 1, 1, 1, lrn=False, pool=True),
        ),
        (4096, 4096),
        6,
        {"input_size": 224, "lrn": False, "dropout_placement": "input", "init": "torch"},
    ),
    # The paper's topology for 28..64 pixel inputs: 28 -> 24 -> pool 11 -> pool 5 -> pool 2.
    # conv1 is unpadded like the paper's; its LRN on the 24x24 maps is the costliest layer.
    # Widths: those that reach the best Fashion-MNIST accuracy in five CPU minutes
    # (docs/BENCHMARKS.md); about 3/8 of the paper's convolutions and 3/16 of its fc.
    "small": Architecture(
        (
            ConvSpec(36, 5, 1, 0, 1, lrn=True, pool=True),
            ConvSpec(96, 5, 1, 2, 2, lrn=True, pool=True),
            ConvSpec(144, 3, 1, 1, 1, lrn=False, pool=False),
            ConvSpec(144, 3, 1, 1, 2, lrn=False, pool=False),
            ConvSpec(96, 3, 1, 1, 2, lrn=False, pool=True),
        ),
        (768, 768),
        None,
        {"input_size": 28, "in_channels": 1, "num_classes": 10},
    ),
}


def model_config(name: str, **options: Any) -> ModelConfig:
    """The resolved ModelConfig of variant `name` with `options` applied on top."""
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(ARCHITECTURES)}")
    return ModelConfig(name=name, **{**ARCHITECTURES[name].defaults, **options})
