"""AlexNet (Krizhevsky, Sutskever & Hinton, 2012) and its named variants.

`paper` is the network of §3.5 / Figure 2 exactly:

    conv1  96 x 11x11 /4          ReLU, LRN, max-pool 3/2     227 -> 55 -> 27
    conv2 256 x 5x5 pad 2, 2 groups ReLU, LRN, max-pool 3/2     27 -> 13
    conv3 384 x 3x3 pad 1          ReLU                          13
    conv4 384 x 3x3 pad 1, 2 groups ReLU                        13
    conv5 256 x 3x3 pad 1, 2 groups ReLU, max-pool 3/2          13 -> 6
    fc6 4096, ReLU, dropout 0.5;  fc7 4096, ReLU, dropout 0.5;  fc8 num_classes

with the paper's LRN (sum of squares, k=2, n=5, alpha=1e-4, beta=0.75; see lrn.py) and
init (§5). 60,965,224 parameters with 1000 classes. Departures, all on purpose:

- Input 227x227, not the 224 of the text: 11x11 kernels at stride 4 give the paper's
  55x55 maps only from 227 (as in Caffe).
- The two GPUs of §3.2 are convolution groups (groups=2) on one device; the arithmetic is
  the same, the placement is not.
- fc8 returns logits; the softmax lives in the loss and in predict.

Other variants:
- `paper-ungrouped`: the same widths in one tower (`groups=False`), 62,378,344 parameters.
- `owt`: torchvision's "one weird trick" AlexNet (64-192-384-256-256, no LRN, no groups,
  11x11/4 pad 2 on 224 inputs, adaptive average pool to 6x6, dropout on the inputs of
  fc6 and fc7), with the same state-dict keys, so torchvision weights load one to one.
- `small`: the paper's topology (5 conv with LRN after the first two, overlapping pooling
  after conv1, conv2 and conv5, groups in conv2/4/5, 3 fc with dropout) sized for 28 to
  64 pixel inputs: conv1 is 5x5 stride 1 instead of 11x11 stride 4, and the widths are
  smaller. The default for Fashion-MNIST.

Every variant takes the options of ModelConfig (activation, lrn, groups, pooling,
dropout, dropout_placement, width, in_channels, num_classes, input_size, init). The
variants' layer tables live in variants.py, which needs no torch.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..config import ModelConfig
from .lrn import LocalResponseNorm, kernel_of, set_kernel
from .variants import ARCHITECTURES, model_config

# §3.4: overlapping pooling z=3, s=2; the "traditional" comparison z=s=2.
POOL_WINDOW = {"overlap": (3, 2), "nonoverlap": (2, 2)}
ACTIVATION = {"relu": lambda: nn.ReLU(inplace=True), "tanh": nn.Tanh}


def _scaled(channels: int, width: float, multiple: int) -> int:
    """Channels times the width multiplier, rounded to a multiple of `multiple`."""
    return max(multiple, int(round(channels * width / multiple)) * multiple)


def _out_size(size: int, kernel: int, stride: int, padding: int = 0) -> int:
    return (size + 2 * padding - kernel) // stride + 1


class AlexNet(nn.Module):
    """AlexNet built from a ModelConfig; `features` / `avgpool` / `classifier` as in torchvision."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        arch = ARCHITECTURES[config.name]
        act = ACTIVATION[config.activation]
        pool_k, pool_s = POOL_WINDOW[config.pooling]

        layers: list[nn.Module] = []
        channels, size = config.in_channels, config.input_size
        multiple = max(spec.groups for spec in arch.convs)  # every grouped conv's input divides
        for spec in arch.convs:
            out = _scaled(spec.channels, config.width, multiple)
            groups = spec.groups if config.groups else 1
            layers += [nn.Conv2d(channels, out, spec.kernel, spec.stride, spec.padding, groups=groups), act()]
            size = _out_size(size, spec.kernel, spec.stride, spec.padding)
            if spec.lrn and config.lrn:
                layers.append(LocalResponseNorm(out))  # §3.3 constants are its defaults
            if spec.pool:
                layers.append(nn.MaxPool2d(pool_k, pool_s))
                size = _out_size(size, pool_k, pool_s)
            channels = out
        if size < 1:
            raise ValueError(f"input_size {config.input_size} is too small for model {config.name!r}")
        self.features = nn.Sequential(*layers)

        if arch.adaptive_pool is None:
            self.avgpool = nn.Identity()
        else:
            self.avgpool = nn.AdaptiveAvgPool2d((arch.adaptive_pool, arch.adaptive_pool))
            size = arch.adaptive_pool

        fc: list[nn.Module] = []
        fan_in = channels * size * size
        for hidden in arch.hidden:
            width = _scaled(hidden, config.width, 1)
            linear, relu = nn.Linear(fan_in, width), act()
            drop = nn.Dropout(config.dropout)
            fc += [linear, relu, drop] if config.dropout_placement == "output" else [drop, linear, relu]
            fan_in = width
        fc.append(nn.Linear(fan_in, config.num_classes))
        self.classifier = nn.Sequential(*fc)
        init_weights(self, config.init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))

    def penultimate(self, x: torch.Tensor) -> torch.Tensor:
        """The fc7 activations (after its ReLU): the 4096-d code of Figure 4."""
        x = torch.flatten(self.avgpool(self.features(x)), 1)
        return self.classifier[:-1](x)

    def set_lrn_kernel(self, kernel: str) -> AlexNet:
        """The LRN layers' kernel: "torch" (operations; a new model's) or "fused" (lrn.c, on
        the CPU); entry points choose it with core/machine.select_lrn."""
        set_kernel(self, kernel)
        return self

    @property
    def lrn_kernel(self) -> str | None:
        """The LRN layers' kernel; None: the model has no LRN."""
        return kernel_of(self)


def init_weights(model: AlexNet, scheme: str) -> None:
    """Initialise weights in place.

    paper   (§5): every weight ~ N(0, 0.01); biases 1 in conv2, conv4, conv5, fc6, fc7
            (positive inputs for the ReLUs early on), 0 in conv1, conv3 and fc8.
    caffe   (bvlc_alexnet): as paper, but those biases are 0.1 and fc6/fc7 weights have
            std 0.005 (Caffe reported a flat loss with bias 1).
    torch   PyTorch's default layer init, which torchvision's AlexNet uses.
    kaiming He-normal weights (fan-in, ReLU gain), zero biases: for deep nets without
            normalisation trained briefly from scratch, such as the Fashion-MNIST recipe.
    """
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    linears = [m for m in model.classifier if isinstance(m, nn.Linear)]
    one_bias = {id(convs[i]) for i in (1, 3, 4)} | {id(m) for m in linears[:-1]}
    hidden_fc = {id(m) for m in linears[:-1]}
    for m in convs + linears:
        if scheme == "torch":
            m.reset_parameters()
        elif scheme == "kaiming":
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            nn.init.zeros_(m.bias)
        elif scheme in ("paper", "caffe"):
            caffe = scheme == "caffe"
            std = 0.005 if caffe and id(m) in hidden_fc else 0.01
            nn.init.normal_(m.weight, 0.0, std)
            nn.init.constant_(m.bias, (0.1 if caffe else 1.0) if id(m) in one_bias else 0.0)
        else:
            raise ValueError(f"unknown init {scheme!r}")


def build_model(name: str = "paper", **options: Any) -> AlexNet:
    """Build variant `name` (paper, paper-ungrouped, owt, small) with ModelConfig options."""
    return AlexNet(model_config(name, **options))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def summarize(model: AlexNet, input_size: int | None = None) -> dict:
    """One row per layer: name, output shape (C, H, W), parameters, multiply-accumulates."""
    cfg = model.config
    size = input_size or cfg.input_size
    rows: list[dict] = []

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        shape = tuple(output.shape[1:])
        macs = 0
        if isinstance(module, nn.Conv2d):
            macs = output[0].numel() * (module.in_channels // module.groups) * math.prod(module.kernel_size)
        elif isinstance(module, nn.Linear):
            macs = module.in_features * module.out_features
        rows.append(
            {
                "name": names[module],
                "type": type(module).__name__,
                "output": list(shape),
                "params": sum(p.numel() for p in module.parameters(recurse=False)),
                "macs": macs,
            }
        )

    names = {m: n for n, m in model.named_modules() if n and not list(m.children())}
    handles = [m.register_forward_hook(hook) for m in names]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, cfg.in_channels, size, size, device=next(model.parameters()).device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return {
        "model": cfg.name,
        "input": [cfg.in_channels, size, size],
        "layers": rows,
        "params": count_parameters(model),
        "macs": sum(r["macs"] for r in rows),
    }
