"""The paper's figures as commands: `alexnet filters`, `alexnet neighbors`, `alexnet plot`.

- filters   (Figure 3): the conv1 kernels of a checkpoint as a grid of tiles, one tile per
            kernel. Where conv2 is grouped (the `paper` and `small` variants: groups=2, the
            two GPUs of §3.2), conv1's first half of output channels feeds tower 1 and the
            second half tower 2, and the halves are drawn as two grids side by side, as the
            paper shows GPU 1 and GPU 2.
- neighbors (Figure 4): query images from the validation/test split and, for each, the
            training images whose fc7 activations (AlexNet.penultimate, the 4096-d code at
            width 1) are nearest in Euclidean distance, searched in the fc7 index of the
            training split (neighbors.fc7_index: computed once per checkpoint and data,
            cached beside the checkpoint; `alexnet serve` searches the same index).
- plot      the training curves of a run directory's metrics.csv: loss, top-1 accuracy
            and learning rate against epochs.

What is computed, not drawn (the kernels per tower, fc7 and the index) lives in
inspection.py, which the page of `alexnet serve` shares; the names are imported here too.
Drawings use matplotlib's Agg canvas directly (no pyplot, no display). Each PNG is
exactly figsize x dpi pixels (no tight bounding box), written atomically.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..core.rundir import REQUIRED_FIELDS, read_metrics
from ..run.errors import UserError
from ..run.tblog import normalise_kernels as normalise_kernels
from .inspection import FilterGrid as FilterGrid
from .inspection import filter_grids, filter_layout
from .neighbors import checkpoint_key, fc7_codes, fc7_index
from .neighbors import fc7_features as fc7_features
from .neighbors import nearest_neighbors as nearest_neighbors

if TYPE_CHECKING:
    import numpy as np
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from ..core.model import AlexNet
    from ..data.loaders import Split

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
    from ..run.jsonio import atomic_write

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
    from ..core.checkpoint import load_checkpoint, model_from_checkpoint

    model = model_from_checkpoint(load_checkpoint(path), path)
    out = Path(out) if out else Path(path).parent / "conv1_filters.png"
    return {"checkpoint": str(path), **draw_filters(model, out, title=f"{Path(path).name}: conv1")}


# ----------------------------------------------------------------------------- neighbors (Figure 4)


def _check_counts(queries: int, k: int, batch_size: int, limit_train: int | None) -> None:
    for name, value in (("--queries", queries), ("--k", k), ("--batch-size", batch_size)):
        if value < 1:
            raise UserError(f"{name} must be at least 1, got {value}")
    if limit_train is not None and limit_train < 1:
        raise UserError(f"--limit-train must be at least 1, got {limit_train}")


def _neighbor_rows(
    train: Split, found: dict, pick: list[int], q_labels: list[int], query_split: str
) -> tuple[list[dict], list[torch.Tensor]]:
    """The figure's rows (each query and its neighbours, as JSON) and the neighbours' images."""
    classes = train.classes
    rows, nn_images = [], []
    for qi, (position, label) in enumerate(zip(pick, q_labels)):
        nn_idx = found["indices"][qi].tolist()
        images, nn_labels = train.loader.items(nn_idx)
        nn_images.append(images)
        neighbors = [
            {"index": i, "distance": float(d), "label": classes[y]}
            for i, d, y in zip(nn_idx, found["distances"][qi].tolist(), nn_labels)
        ]
        rows.append({"split": query_split, "index": position, "label": classes[label], "neighbors": neighbors})
    return rows, nn_images


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
    nearest to each in fc7; writes the PNG and returns the neighbours.

    The training images' fc7 codes come from the checkpoint's fc7 index
    (neighbors.fc7_index), computed on the first call and cached beside the checkpoint;
    a training query's code is its row of the index."""
    import dataclasses

    from ..core.checkpoint import load_inference
    from ..data.datasets import load_split
    from ..run.runtime import resolve_device

    _check_counts(queries, k, batch_size, limit_train)
    dev = resolve_device(device)
    key = checkpoint_key(path)  # before loading: a checkpoint replaced meanwhile is not this model
    loaded = load_inference(path, dev)
    overrides = {k: v for k, v in {"name": data, "data_dir": data_dir}.items() if v is not None}
    # every training image once (up to --limit-train), in file order, unaugmented; strict: a
    # skipped unreadable file would shift the positions that index the training images; the
    # queries from the whole validation split
    data_cfg = dataclasses.replace(
        loaded.config.data, limit_train=limit_train, limit_val=None, strict=True, **overrides
    )
    train = load_split(True, data_cfg, batch_size, ordered=True)
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

    # the queries' codes first: a model whose fc7 overflows is refused before the index is built
    codes = None if query_split == "train" else fc7_codes(loaded, q_images)
    index = fc7_index(loaded, train, path, key, limit_train)  # as `alexnet serve` builds it
    codes = index.features[pick] if codes is None else codes
    found = index.nearest(codes, k)
    rows, nn_images = _neighbor_rows(train, found, pick, q_labels, query_split)
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


def metric_columns(run_dir: str | Path) -> dict[str, list[float]]:
    """The columns of RUN_DIR/metrics.csv that plot draws, as floats (blank: NaN): the rows
    of rundir.read_metrics, turned into columns."""
    rows = read_metrics(run_dir)
    return {c: [row[c] for row in rows] for c in METRIC_COLUMNS}


def draw_curves(run_dir: str | Path, out: str | Path | None = None) -> dict:
    """Loss, top-1 accuracy (train and validation) and learning rate against epochs."""
    m = metric_columns(run_dir)
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
