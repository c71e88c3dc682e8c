"""AlexNet (Krizhevsky, Sutskever & Hinton, 2012): the paper's network and recipe for PyTorch."""

from .config import DataConfig, ModelConfig, RunConfig, TrainConfig
from .core.lrn import LocalResponseNorm
from .core.model import AlexNet, build_model, count_parameters

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
