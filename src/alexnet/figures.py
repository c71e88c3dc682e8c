"""The paper's figures as commands: `alexnet filters`, `alexnet neighbors`, `alexnet plot`.

- filters   (Figure 3): the conv1 kernels of a checkpoint as a grid of tiles, one tile per
            kernel. Where conv2 is grouped (the `paper` and `small` variants: groups=2, the
            two GPUs of §3.2), conv1's first half of output channels feeds tower 1 and the
            second half tower 2, and the halves are drawn as two grids side by side, as the
            paper shows GPU 1 and GPU 2.
- neighbors (Figure 4): query images from the validation/test split and, for each, the
            training images whose fc7 activations (AlexNet.penultimate, the 4096-d code at
            width 1) are nearest in Euclidean distance, found by streaming over the training
            split batch by batch with a running top-k per query.
- plot      the training curves of a run directory's metrics.csv: loss, top-1 accuracy
            and learning rate against epochs.

Drawings use matplotlib's Agg canvas directly (no pyplot, no display). Each PNG is
exactly figsize x dpi pixels (no tight bounding box), written atomically.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .errors import UserError
from .rundir import REQUIRED_FIELDS
from .rundir import read_metrics as read_rows
from .tblog import normalise_kernels

if TYPE_CHECKING:
    import numpy as np
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from .augment import Preprocess
    from .loaders import Loader
    from .model import AlexNet

DPI = 100
TILE_INCHES = 0.6  # filters: width of one kernel tile
NEIGHBOR_INCHES = 1.6  # neighbors: width and height of one image cell
PLOT_FIGSIZE = (15.0, 4.0)  # plot: three panels side by side


# ----------------------------------------------------------------------------- drawing helpers


def _figure(figsize: tuple[float, float]) -> Figure:
    """A matplotlib Figure on the Agg canvas, without pyplot or a display."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:  # matplotlib is the `figures` extra
        raise UserError("figures need matplotlib: pip install 'alexnet[figures]' (or matplotlib>=3.5)") from e
    fig = Figure(figsize=figsize, dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, out: str | Path) -> dict:
    """Write `fig` as a PNG of exactly figsize x DPI pixels; returns its path and size."""
    from .jsonio import atomic_write

    out = Path(out)
    try:
        atomic_write(out, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI))
    except OSError as e:
        raise UserError(f"{out}: cannot write the PNG ({e.strerror or e})") from e
    w, h = fig.get_size_inches()
    return {"out": str(out), "size": [int(round(w * DPI)), int(round(h * DPI))]}


def _image_array(img: torch.Tensor) -> np.ndarray:
    """A C x H x W image (uint8 or float in [0, 1]) as what imshow takes: H x W x 3 or H x W."""
    img = img.detach().cpu()
    if img.shape[0] == 3:
        return img.permute(1, 2, 0).numpy()
    if img.shape[0] == 1:
        return img[0].numpy()
    return img.float().mean(0).numpy()  # other channel counts: their mean, in gray


def _imshow(ax: Axes, img: torch.Tensor, vmax: float) -> None:
    arr = _image_array(img)
    gray = arr.ndim == 2
    ax.imshow(
        arr,
        cmap="gray" if gray else None,
        vmin=0 if gray else None,
        vmax=vmax if gray else None,
        interpolation="nearest",
    )
    ax.set_xticks([])
    ax.set_yticks([])


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


def _grid_shape(n: int) -> tuple[int, int]:
    """Rows and columns for n tiles, a little wider than tall (48 -> 6 x 8)."""
    cols = max(1, math.ceil(math.sqrt(n * 4 / 3)))
    return math.ceil(n / cols), cols


def filter_grids(model: AlexNet) -> list[FilterGrid]:
    """The grids of the filters figure: one per tower where conv2 is grouped, else one.

    conv2 with groups=g reads conv1's output channels in g consecutive blocks, so block i
    of conv1's kernels is tower i's (the paper's GPU i). Every kernel is one tile.
    """
    from torch import nn

    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    kernels = normalise_kernels(convs[0].weight)
    groups = convs[1].groups if len(convs) > 1 else 1
    if groups == 1:
        return [FilterGrid("conv1", kernels, *_grid_shape(kernels.shape[0]))]
    per = kernels.shape[0] // groups
    return [
        FilterGrid(f"tower {i + 1} (GPU {i + 1})", kernels[i * per : (i + 1) * per], *_grid_shape(per))
        for i in range(groups)
    ]


def filter_layout(model: AlexNet) -> list[dict]:
    """What the filters figure draws: each grid's title, tile count and rows x columns."""
    return [{"title": g.title, "tiles": g.tiles, "rows": g.rows, "cols": g.cols} for g in filter_grids(model)]


def filters_figsize(grids: list[FilterGrid]) -> tuple[float, float]:
    width = sum(g.cols for g in grids) * TILE_INCHES + 0.4 * (len(grids) - 1) + 0.4
    height = max(g.rows for g in grids) * TILE_INCHES + 0.8
    # whole pixels at DPI
    return round(width * DPI) / DPI, round(height * DPI) / DPI


def draw_filters(model: AlexNet, out: str | Path, title: str | None = None) -> dict:
    """Draw conv1's kernels (Figure 3) to `out`; returns the path, pixel size and layout.

    Every kernel is normalised to [0, 1] on its own (per-kernel min/max, see
    normalise_kernels), so tiles show each kernel's pattern, not its magnitude. RGB kernels
    are drawn in colour, 1-channel kernels in gray (other channel counts: their mean).
    """
    grids = filter_grids(model)
    fig = _figure(filters_figsize(grids))
    sub = fig.subfigures(1, len(grids), width_ratios=[g.cols for g in grids], squeeze=False)[0]
    for sf, g in zip(sub, grids):
        axes = sf.subplots(
            g.rows,
            g.cols,
            squeeze=False,
            gridspec_kw={
                "wspace": 0.08,
                "hspace": 0.08,
                "left": 0.02,
                "right": 0.98,
                "bottom": 0.02,
                "top": 1 - 0.55 / fig.get_size_inches()[1],
            },
        )
        for i, ax in enumerate(axes.flat):
            if i < g.tiles:
                _imshow(ax, g.kernels[i], 1.0)
            else:
                ax.axis("off")
        sf.suptitle(g.title, fontsize=10)
    if title:
        fig.text(0.005, 0.995, title, fontsize=7, va="top", ha="left", color="0.4")
    result = _save(fig, out)
    result["grids"] = filter_layout(model)
    return result


def filters_command(path: str, out: str | None = None) -> dict:
    from .checkpoint import load_checkpoint, model_from_checkpoint

    model = model_from_checkpoint(load_checkpoint(path), path)
    out = Path(out) if out else Path(path).parent / "conv1_filters.png"
    return {"checkpoint": str(path), **draw_filters(model, out, title=f"{Path(path).name}: conv1")}


# ----------------------------------------------------------------------------- neighbors (Figure 4)


@torch.no_grad()
def fc7_features(model: AlexNet, preprocess: Preprocess, images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """fc7 activations (model.penultimate, eval mode, fp32) of uint8 images, as evaluation
    preprocesses them (mean subtraction, std, centre crop)."""
    model.eval()
    return model.penultimate(preprocess(images.to(device), train=False)).float()


def _distances(queries: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
    # the direct difference, not |a|^2 + |b|^2 - 2ab: an image's distance to itself is 0
    return torch.cdist(queries, feats, compute_mode="donot_use_mm_for_euclid_dist")


def _keep_nearest(dist: torch.Tensor, index: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k smallest distances per row and their indices; ties go to the lower index.

    torch.topk does not promise an order among equal values; a stable sort of candidates
    that are in index order does, so streaming and a search over everything at once agree.
    """
    order = torch.sort(dist, dim=1, stable=True).indices[:, :k]
    return dist.gather(1, order), index.gather(1, order)


@torch.no_grad()
def nearest_neighbors(
    model: AlexNet, preprocess: Preprocess, queries: torch.Tensor, train_loader: Loader, k: int, device: torch.device
) -> dict:
    """For each query image (uint8 N x C x H x W), the k training images nearest in fc7.

    train_loader yields (uint8 images, labels) batches of every training image once, in
    order; an image's index is its position in that order. Only the running k best per
    query are kept (the candidates of each batch are merged with them), never the
    training set's features. Returns distances and indices (N x k, nearest first) and
    the number of training images seen.
    """
    q = fc7_features(model, preprocess, queries, device)
    best_d = torch.empty(q.shape[0], 0, device=device)
    best_i = torch.empty(q.shape[0], 0, dtype=torch.long, device=device)
    seen = 0
    for images, _ in train_loader:
        f = fc7_features(model, preprocess, images, device)
        idx = torch.arange(seen, seen + f.shape[0], device=device).expand(q.shape[0], -1)
        best_d, best_i = _keep_nearest(torch.cat([best_d, _distances(q, f)], 1), torch.cat([best_i, idx], 1), k)
        seen += f.shape[0]
    return {"distances": best_d.cpu(), "indices": best_i.cpu(), "train_images": seen}


def neighbors_command(
    path: str,
    data: str | None = None,
    data_dir: str | None = None,
    queries: int = 5,
    k: int = 6,
    out: str | None = None,
    limit_train: int | None = None,
    batch_size: int = 256,
    seed: int = 0,
    query_split: str = "val",
    device: str = "auto",
) -> dict:
    """Figure 4 for a checkpoint: `queries` images of the validation/test split (or of the
    training split, query_split="train"), drawn with `seed`, and the k training images
    nearest to each in fc7; writes the PNG and returns the neighbours."""
    import dataclasses

    from .augment import Preprocess
    from .checkpoint import load_inference
    from .data import load_split
    from .runtime import resolve_device

    for name, value in (("--queries", queries), ("--k", k), ("--batch-size", batch_size)):
        if value < 1:
            raise UserError(f"{name} must be at least 1, got {value}")
    if limit_train is not None and limit_train < 1:
        raise UserError(f"--limit-train must be at least 1, got {limit_train}")
    dev = resolve_device(device)
    loaded = load_inference(path, dev)
    cfg = loaded.config
    data_cfg = cfg.data
    if data is not None:
        data_cfg = dataclasses.replace(data_cfg, name=data)
    if data_dir is not None:
        data_cfg = dataclasses.replace(data_cfg, data_dir=data_dir)
    # every training image once, in file order, unaugmented; strict: a skipped unreadable
    # file would shift the positions that index the training images
    train = load_split(True, data_cfg, batch_size, limit=limit_train, ordered=True, strict=True)
    if k > train.size:
        raise UserError(f"--k {k} is more than the {train.size} training images")
    source = train if query_split == "train" else load_split(False, data_cfg, batch_size, ordered=True)
    if queries > source.size:
        raise UserError(
            f"--queries {queries} is more than the {source.size} images of the "
            f"{'training' if query_split == 'train' else 'validation'} split"
        )
    pick = torch.randperm(source.size, generator=torch.Generator().manual_seed(seed))[:queries].tolist()
    q_images, q_labels = source.loader.items(pick)

    preprocess = Preprocess(data_cfg, cfg.model.input_size, dev, channels_last=False, mean_image=loaded.mean_image)
    found = nearest_neighbors(loaded.model, preprocess, q_images, train.loader, k, dev)
    classes = train.classes
    rows, nn_images = [], []
    for qi, (index, label) in enumerate(zip(pick, q_labels)):
        nn_idx = found["indices"][qi].tolist()
        images, nn_labels = train.loader.items(nn_idx)
        nn_images.append(images)
        rows.append(
            {
                "split": query_split,
                "index": index,
                "label": classes[label],
                "neighbors": [
                    {"index": i, "distance": float(d), "label": classes[y]}
                    for i, d, y in zip(nn_idx, found["distances"][qi].tolist(), nn_labels)
                ],
            }
        )
    out = Path(out) if out else Path(path).parent / "neighbors.png"
    drawn = draw_neighbors(q_images, nn_images, rows, out)
    return {
        "checkpoint": str(path),
        "data": data_cfg.name,
        "train_images": found["train_images"],
        "k": k,
        "queries": rows,
        **drawn,
    }


def neighbors_figsize(queries: int, k: int) -> tuple[float, float]:
    return (k + 1) * NEIGHBOR_INCHES, queries * NEIGHBOR_INCHES


def draw_neighbors(q_images: torch.Tensor, nn_images: list[torch.Tensor], rows: list[dict], out: str | Path) -> dict:
    """One row per query: the query image, then its neighbours with their distances."""
    k = nn_images[0].shape[0]
    fig = _figure(neighbors_figsize(len(rows), k))
    axes = fig.subplots(
        len(rows),
        k + 1,
        squeeze=False,
        gridspec_kw={
            "wspace": 0.1,
            "hspace": 0.35,
            "left": 0.01,
            "right": 0.99,
            "bottom": 0.01,
            "top": 1 - 0.3 / fig.get_size_inches()[1],
        },
    )
    for r, row in enumerate(rows):
        _imshow(axes[r, 0], q_images[r], 255)
        axes[r, 0].set_title(f"{row['split']} #{row['index']}\n{row['label']}", fontsize=7, color="tab:red")
        for c, n in enumerate(row["neighbors"], start=1):
            _imshow(axes[r, c], nn_images[r][c - 1], 255)
            axes[r, c].set_title(f"train #{n['index']}\nd = {n['distance']:.3g}", fontsize=7)
    return _save(fig, out)


# ----------------------------------------------------------------------------- plot (curves)

METRIC_COLUMNS = REQUIRED_FIELDS  # what every metrics.csv has: epoch, lr, losses, accuracies


def read_metrics(run_dir: str | Path) -> dict[str, list[float]]:
    """The columns of RUN_DIR/metrics.csv that plot draws, as floats (blank: NaN)."""
    rows = read_rows(run_dir)
    return {c: [row[c] for row in rows] for c in METRIC_COLUMNS}


def draw_curves(run_dir: str | Path, out: str | Path | None = None) -> dict:
    """Loss, top-1 accuracy (train and validation) and learning rate against epochs."""
    m = read_metrics(run_dir)
    out = Path(out) if out else Path(run_dir) / "curves.png"
    fig = _figure(PLOT_FIGSIZE)
    axes = fig.subplots(1, 3, gridspec_kw={"wspace": 0.3, "left": 0.05, "right": 0.98, "bottom": 0.13, "top": 0.88})
    ep = m["epoch"]
    panels = (
        (axes[0], "loss", (("train_loss", "train"), ("val_loss", "validation"))),
        (axes[1], "top-1 accuracy", (("train_acc", "train"), ("val_top1", "validation"))),
        (axes[2], "learning rate", (("lr", None),)),
    )
    for ax, title, series in panels:
        for col, label in series:
            ax.plot(ep, m[col], marker="o", markersize=3, label=label)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(True, alpha=0.3)
        if series[0][1]:
            ax.legend(fontsize=8)
    lrs = [v for v in m["lr"] if v == v]
    if lrs and min(lrs) > 0 and max(lrs) / min(lrs) > 20:
        axes[2].set_yscale("log")
    from matplotlib.ticker import MaxNLocator

    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(str(run_dir), fontsize=9)
    return {"run": str(run_dir), "epochs": len(ep), **_save(fig, out)}


# ----------------------------------------------------------------------------- CLI
