"""AlexNet (Krizhevsky, Sutskever & Hinton, 2012): the paper's network and recipe for PyTorch."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .config import DataConfig, ModelConfig, RunConfig, TrainConfig

if TYPE_CHECKING:
    from .core.lrn import LocalResponseNorm
    from .core.model import AlexNet, build_model, count_parameters

# The names that need torch, imported at their first use: `import alexnet` (and so the
# command line, which answers --help before it imports torch) does not import torch.
_WITH_TORCH = {
    "AlexNet": ".core.model",
    "build_model": ".core.model",
    "count_parameters": ".core.model",
    "LocalResponseNorm": ".core.lrn",
}

__all__ = [
    "AlexNet",
    "build_model",
    "count_parameters",
    "LocalResponseNorm",
    "ModelConfig",
    "DataConfig",
    "TrainConfig",
    "RunConfig",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name not in _WITH_TORCH:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_WITH_TORCH[name], __name__), name)
    globals()[name] = value
    return value
