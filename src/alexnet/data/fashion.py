"""Fashion-MNIST's name and pixel statistics, and how a DataConfig says it means it.

No torch here: the recipes (recipes.py) set Fashion-MNIST's defaults from these, and the
command line shows those defaults (`alexnet train --help`) before torch is imported.
Reading the images is datasets.py's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..config import DataConfig

FASHION_MNIST = "fashion-mnist"
# Fashion-MNIST's training-set pixel mean and std in 0..255 units.
FASHION_MNIST_MEAN, FASHION_MNIST_STD = (72.94,), (90.02,)


def is_fashion_mnist(cfg: DataConfig) -> bool:
    return cfg.name == FASHION_MNIST
