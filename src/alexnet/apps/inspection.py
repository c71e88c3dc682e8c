"""What `alexnet serve` shows, computed without HTTP: plain dicts with PNG data URLs.

Every function takes a loaded checkpoint (checkpoint.Inference: the model in eval mode on
its device, its preprocessing and precision, config, class names and mean image) and a
uint8 (C, H, W) image at the data's stored size, as a loader yields it or decode_upload
makes it from a file's bytes. The network's input and output are the Inference's (mean
subtraction, std, the centre patch or §4.1's ten patches; the checkpoint's precision),
so what the page shows is what `alexnet predict` and `alexnet evaluate` compute.

- classify_image: top-k of the centre patch, or of the softmax averaged over the ten
               patches (§4.1).
- activations: each conv stage of `features` after its ReLU/LRN/pool and fc6/fc7 after
               their ReLU, caught by forward hooks; a conv layer is one grid of tiles per
               tower (§3.2's GPUs) where the model is grouped.
- occlusion:   Zeiler & Fergus (2014): the probability of the top class with a grey window
               (the mean: zero after mean subtraction) slid over the input, the occluded
               copies batched; at most MAX_OCCLUSION_POSITIONS windows.
- neighbours (Figure 4): the fc7 index and its search are neighbors.py's.
- filters:     conv1's kernels per tower (Figure 3), as figures.py draws them.

Images are PNGs encoded with PIL (matplotlib is an optional extra), in data URLs. A tile
grid has no gaps: tile (r, c) of a grid with tile [h, w] is the rectangle at (c * w, r * h),
so a page can crop one channel out of it.
"""

from __future__ import annotations

import base64
import io
import math
import os
import tempfile
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..data.datasets import load_image, stored_transform
from ..run.errors import UserError
from ..run.tblog import normalise_kernels

if TYPE_CHECKING:
    from collections.abc import Callable

    from ..core.checkpoint import Inference
    from ..core.model import AlexNet

PNG_URL = "data:image/png;base64,"
TEN_CROP_CENTRE = 4  # torchvision's ten_crop order: four corners, the centre, then their mirrors
MAX_OCCLUSION_POSITIONS = 900  # windows per occlusion map: 900 paper-model forwards, a few seconds
OCCLUSION_BATCH = 32  # occluded copies per forward pass
STRIP_COLS = 64  # fc6/fc7: units per row of the strip image (4096 units: 64 x 64 pixels)
# low to high: black, purple, red, orange, pale yellow (matplotlib's "inferno", sampled)
HEAT_COLOURS = np.array([[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], dtype=np.float64)


class ImageTooLarge(UserError):
    """An upload with more pixels than PIL's decompression-bomb limit (HTTP 413, not 400)."""


# ----------------------------------------------------------------------------- images and PNGs


def png_bytes(array: np.ndarray) -> bytes:
    """A uint8 H x W (gray) or H x W x 3 (RGB) array as PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buf, format="PNG", compress_level=3)
    return buf.getvalue()


def data_url(array: np.ndarray) -> str:
    return PNG_URL + base64.b64encode(png_bytes(array)).decode("ascii")


def image_array(img: torch.Tensor) -> np.ndarray:
    """A (C, H, W) uint8 image as an H x W (one channel) or H x W x 3 array; other channel
    counts: their mean, in gray."""
    img = img.detach().cpu()
    if img.shape[0] == 3:
        return img.permute(1, 2, 0).numpy()
    if img.shape[0] == 1:
        return img[0].numpy()
    return img.float().mean(0).round().clamp(0, 255).to(torch.uint8).numpy()


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Floats in [0, 1] to 0..255."""
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def _stretch(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """x scaled to [0, 1] by its own min and max over `dims`; a constant part becomes 0."""
    x = x.detach().float().cpu()
    lo, hi = x.amin(dim=dims, keepdim=True), x.amax(dim=dims, keepdim=True)
    span = hi - lo
    return torch.where(span > 0, (x - lo) / span.clamp_min(torch.finfo(torch.float32).tiny), torch.zeros_like(x))


def input_image(x: torch.Tensor) -> np.ndarray:
    """The network's input (C, S, S), mean subtracted and scaled, stretched to 0..255 as one
    image (all channels together, so colours keep their balance): what the network sees."""
    return image_array(_to_uint8(_stretch(x, (0, 1, 2))))


def decode_upload(data: bytes, channels: int, resize: int) -> torch.Tensor:
    """An uploaded image file's bytes as the uint8 (C, resize, resize) image the data path
    stores (§2: shorter side to `resize`, then the central square).

    Through data.load_image, so that an upload is refused for what a file on disk is
    refused for (not an image, truncated, a decompression bomb: ImageTooLarge) and
    converted the same way (EXIF rotation, modes, 16 bits). load_image reads a path: the
    bytes go to a private temporary file for the decode, and its name in an error becomes
    "the upload".
    """
    if not data:
        raise UserError("the upload is empty: send the image file's bytes as the request body")
    fd, tmp = tempfile.mkstemp(prefix="alexnet-upload-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        try:
            img = load_image(tmp, channels)
        except UserError as e:
            message = str(e).replace(tmp, "the upload")
            if isinstance(e.__cause__, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
                raise ImageTooLarge(message) from e
            raise UserError(message) from e
    finally:
        os.unlink(tmp)
    with img:
        return stored_transform(resize)(img)


def grid_shape(n: int) -> tuple[int, int]:
    """Rows and columns for n tiles, a little wider than tall (48 -> 6 x 8)."""
    cols = max(1, math.ceil(math.sqrt(n * 4 / 3)))
    return math.ceil(n / cols), cols


def tile_grid(tiles: torch.Tensor, cols: int, pad: int = 0, background: float = 0.0) -> np.ndarray:
    """(n, C, h, w) tiles in [0, 1] (C = 1 or 3) as one uint8 image of rows x cols tiles,
    `pad` pixels of `background` between them; cells past the last tile are background."""
    n, c, h, w = tiles.shape
    rows = math.ceil(n / cols)
    grid = torch.full((c, rows * (h + pad) - pad, cols * (w + pad) - pad), background)
    for i in range(n):
        r, col = divmod(i, cols)
        grid[:, r * (h + pad) : r * (h + pad) + h, col * (w + pad) : col * (w + pad) + w] = tiles[i]
    return image_array(_to_uint8(grid))


def heat_colours(v: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (any shape) as RGB uint8 along HEAT_COLOURS (dark low, bright high)."""
    stops = np.linspace(0, 1, len(HEAT_COLOURS))
    rgb = [np.interp(np.clip(v, 0, 1), stops, HEAT_COLOURS[:, ch]) for ch in range(3)]
    return np.stack(rgb, -1).round().astype(np.uint8)


# ----------------------------------------------------------------------------- running the model


def network_input(loaded: Inference, image: torch.Tensor) -> torch.Tensor:
    """The centre patch of a uint8 (C, H, W) image as the network's (1, C, S, S) input."""
    return loaded.views(image[None])[0]


def softmax(loaded: Inference, x: torch.Tensor) -> torch.Tensor:
    """Softmax of the model's outputs for a batch of network inputs (already preprocessed:
    occlusion greys parts of them), float32 on the CPU."""
    return _finite(torch.softmax(loaded.logits(x), dim=1).cpu())


def _finite(probs: torch.Tensor) -> torch.Tensor:
    if not torch.isfinite(probs).all():
        raise UserError("the model's outputs are not finite (NaN or infinity) for this image")
    return probs


def _prediction(loaded: Inference, i: int, p: float) -> dict:
    return {"class": loaded.classes[i], "name": loaded.class_names[i], "probability": p}


def classify_image(loaded: Inference, image: torch.Tensor, topk: int = 5, ten_crop: bool = False) -> dict:
    """Top-k classes of the centre patch, or of the softmax averaged over §4.1's ten
    patches (four corners, centre, and their mirrors): Inference.probabilities, as
    `alexnet predict` and `alexnet evaluate` compute them; "input" is the centre patch as
    the network sees it."""
    if topk < 1:
        raise UserError(f"topk must be at least 1, got {topk}")
    probs = _finite(loaded.probabilities(image[None], ten_crop)[0].cpu())
    top = probs.topk(min(topk, probs.numel()))
    return {
        "predictions": [_prediction(loaded, i, p) for p, i in zip(top.values.tolist(), top.indices.tolist())],
        "input": data_url(input_image(network_input(loaded, image)[0])),
        "patches": 10 if ten_crop else 1,
    }


# ----------------------------------------------------------------------------- activations


@dataclass(frozen=True)
class Stage:
    """A layer the page shows: conv1..conv5 (a conv stage of `features`: its conv, ReLU,
    LRN and pool) or fc6/fc7, and the module whose output is the stage's output."""

    name: str
    module: nn.Module
    towers: int  # 2 where the paper splits the layer over its two GPUs (§3.2)


def stages(model: AlexNet) -> list[Stage]:
    """The conv stages of `features` (each ends before the next conv) and the hidden fc
    layers of `classifier` (the activation after each Linear but the last).

    A conv layer's output is split into towers where the conv itself is grouped or the
    next conv reads it grouped: in the paper conv3 (groups 1) still runs half on each GPU.
    """
    feats = list(model.features)
    convs = [i for i, m in enumerate(feats) if isinstance(m, nn.Conv2d)]
    out = []
    for n, i in enumerate(convs):
        last = n + 1 == len(convs)
        end = len(feats) - 1 if last else convs[n + 1] - 1
        towers = max(feats[i].groups, 1 if last else feats[convs[n + 1]].groups)
        out.append(Stage(f"conv{n + 1}", feats[end], towers))
    fc = list(model.classifier)
    hidden = [i for i, m in enumerate(fc) if isinstance(m, nn.Linear)][:-1]
    out += [Stage(f"fc{len(convs) + 1 + n}", fc[i + 1], 1) for n, i in enumerate(hidden)]
    return out


@torch.no_grad()
def capture(loaded: Inference, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each stage's output for the input batch x (float32 copies on the CPU), by forward
    hooks that exist only during this call (the caller holds the model alone)."""
    outputs: dict[str, torch.Tensor] = {}

    def keep(name: str) -> Callable[[nn.Module, tuple, torch.Tensor], None]:
        return lambda _m, _i, out: outputs.__setitem__(name, out.detach().to("cpu", torch.float32, copy=True))

    handles = [s.module.register_forward_hook(keep(s.name)) for s in stages(loaded.model)]
    try:
        loaded.logits(x)
    finally:
        for h in handles:
            h.remove()
    return outputs


def layer_shapes(loaded: Inference) -> list[dict]:
    """Each stage's name and output shape ([C, H, W] or [N]), from one forward of zeros."""
    m = loaded.config.model
    x = torch.zeros(1, m.in_channels, m.input_size, m.input_size, device=loaded.device)
    return [{"name": name, "shape": list(out.shape[1:])} for name, out in capture(loaded, x).items()]


def towers(model: AlexNet) -> int:
    """2 for a model with grouped convolutions (the paper's two GPUs), else 1."""
    return max(m.groups for m in model.features if isinstance(m, nn.Conv2d))


def _conv_layer(name: str, out: torch.Tensor, towers: int) -> dict:
    """A conv stage's (C, H, W) output as one grid per tower, each channel normalised to
    its own range (a channel that is all one value, such as a dead ReLU's, is black)."""
    c, h, w = out.shape
    per = c // towers
    grids = []
    for t in range(towers):
        tiles = _stretch(out[t * per : (t + 1) * per, None], (1, 2, 3))
        rows, cols = grid_shape(per)
        grids.append(
            {
                "channels": [t * per, (t + 1) * per],
                "grid": data_url(tile_grid(tiles, cols)),
                "cols": cols,
                "rows": rows,
                "tile": [h, w],
            }
        )
    return {"name": name, "shape": [c, h, w], "towers": grids}


def _fc_layer(name: str, out: torch.Tensor) -> dict:
    """An fc layer's N units as a strip of STRIP_COLS-unit rows, one pixel a unit, scaled
    by the layer's own range; unit i is pixel (i % cols, i // cols)."""
    n = out.numel()
    cols = min(n, STRIP_COLS)
    rows = math.ceil(n / cols)
    values = torch.zeros(rows * cols)
    values[:n] = _stretch(out, (0,))
    strip = data_url(image_array(_to_uint8(values.view(1, rows, cols))))
    return {"name": name, "shape": [n], "strip": strip, "cols": cols, "rows": rows}


def activations(loaded: Inference, image: torch.Tensor) -> dict:
    """Every stage's output for the image's centre patch: conv layers as tile grids (two
    towers where the model is grouped), fc6/fc7 as strips."""
    outputs = capture(loaded, network_input(loaded, image))
    layers = []
    for s in stages(loaded.model):
        out = outputs[s.name][0]
        layers.append(_conv_layer(s.name, out, s.towers) if out.dim() == 3 else _fc_layer(s.name, out))
    return {"layers": layers}


# ----------------------------------------------------------------------------- occlusion


def occlusion_grid(size: int, window: int | None = None, stride: int | None = None) -> tuple[int, int, list[int]]:
    """The window, the stride and the windows' start offsets along one side of a size x
    size input. Defaults: window size // 7 (at least 3), stride half the window (at least
    1). The last window is moved to the edge so that every pixel is covered; a stride that
    would give more than MAX_OCCLUSION_POSITIONS windows is raised until it does not."""
    window = min(size, max(3, size // 7)) if window is None else window
    if not 1 <= window <= size:
        raise UserError(f"window must be from 1 to the input size {size}, got {window}")
    stride = max(1, window // 2) if stride is None else stride
    if stride < 1:
        raise UserError(f"stride must be at least 1, got {stride}")
    while True:
        starts = list(range(0, size - window + 1, stride))
        if starts[-1] != size - window:
            starts.append(size - window)
        if len(starts) ** 2 <= MAX_OCCLUSION_POSITIONS:
            return window, stride, starts
        stride += 1


@torch.no_grad()
def occlusion(loaded: Inference, image: torch.Tensor, window: int | None = None, stride: int | None = None) -> dict:
    """Zeiler & Fergus (2014), Figure 7: the probability of the unoccluded top class with a
    grey square (the mean image's pixels: zero after mean subtraction) at each position.

    The heat map is that probability at each pixel, averaged over the windows covering
    it, drawn bright where greying the window lowers the probability most ("range": the
    probabilities at the bright and the dark end); the overlay blends it over the input.
    """
    x = network_input(loaded, image)
    size = x.shape[-1]
    window, stride, starts = occlusion_grid(size, window, stride)
    base = softmax(loaded, x)[0]
    top = int(base.argmax())
    corners = [(t, left) for t in starts for left in starts]
    probs = []
    for i in range(0, len(corners), OCCLUSION_BATCH):
        chunk = corners[i : i + OCCLUSION_BATCH]
        xs = x.repeat(len(chunk), 1, 1, 1)
        for j, (t, left) in enumerate(chunk):
            xs[j, :, t : t + window, left : left + window] = 0
        probs.append(softmax(loaded, xs.contiguous(memory_format=loaded.preprocess.memory_format))[:, top])
    p = torch.cat(probs).double().numpy()
    total, count = np.zeros((size, size)), np.zeros((size, size))
    for (t, left), v in zip(corners, p):
        total[t : t + window, left : left + window] += v
        count[t : t + window, left : left + window] += 1
    heat = total / np.maximum(count, 1)
    lo, hi = float(heat.min()), float(heat.max())
    importance = (hi - heat) / (hi - lo) if hi > lo else np.zeros_like(heat)
    return {
        **_prediction(loaded, top, float(base[top])),
        "heatmap": data_url(heat_colours(importance)),
        "overlay": data_url(_overlay(input_image(x[0]), importance)),
        "range": [lo, hi],
        "window": window,
        "stride": stride,
        "positions": len(corners),
    }


def _overlay(base: np.ndarray, importance: np.ndarray) -> np.ndarray:
    """The heat colours over a gray or RGB image, more opaque where importance is higher."""
    rgb = np.repeat(base[..., None], 3, -1) if base.ndim == 2 else base
    alpha = (0.15 + 0.6 * importance)[..., None]
    return (rgb * (1 - alpha) + heat_colours(importance) * alpha).round().astype(np.uint8)


# ----------------------------------------------------------------------------- filters (Figure 3)


@dataclass
class FilterGrid:
    """One grid of the filters figure: the kernels of one tower, normalised to [0, 1]."""

    title: str
    kernels: torch.Tensor  # (n, in_channels, k, k), each kernel scaled to [0, 1]
    rows: int
    cols: int

    @property
    def tiles(self) -> int:
        return self.kernels.shape[0]


def filter_grids(model: AlexNet) -> list[FilterGrid]:
    """The grids of the filters figure: one per tower where conv2 is grouped, else one.

    conv2 with groups=g reads conv1's output channels in g consecutive blocks, so block i
    of conv1's kernels is tower i's (the paper's GPU i). Every kernel is one tile.
    """
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    kernels = normalise_kernels(convs[0].weight)
    groups = convs[1].groups if len(convs) > 1 else 1
    if groups == 1:
        return [FilterGrid("conv1", kernels, *grid_shape(kernels.shape[0]))]
    per = kernels.shape[0] // groups
    return [
        FilterGrid(f"tower {i + 1} (GPU {i + 1})", kernels[i * per : (i + 1) * per], *grid_shape(per))
        for i in range(groups)
    ]


def filter_layout(model: AlexNet) -> list[dict]:
    """What the filters figure draws: each grid's title, tile count and rows x columns."""
    return [{"title": g.title, "tiles": g.tiles, "rows": g.rows, "cols": g.cols} for g in filter_grids(model)]


def filters(model: AlexNet) -> dict:
    """conv1's kernels (Figure 3), one grid per tower, a 1-pixel white line between the
    kernels; RGB kernels in colour, others in gray (more than 3 inputs: their mean)."""
    out = []
    for g in filter_grids(model):
        k = g.kernels if g.kernels.shape[1] in (1, 3) else g.kernels.mean(1, keepdim=True)
        out.append(
            {
                "title": g.title,
                "grid": data_url(tile_grid(k, g.cols, pad=1, background=1.0)),
                "cols": g.cols,
                "rows": g.rows,
                "tile": list(k.shape[-2:]),
            }
        )
    return {"towers": out}
