"""`alexnet experiment NAME`: the paper's ablations, one thing changed, several seeds.

Each experiment trains the Fashion-MNIST recipe's `small` network (or the data's recipe)
once per arm and seed, then writes to OUT/NAME/: results.json, results.md (mean and
spread over seeds) and results.png. Sized so that the whole set runs in under an hour on
a 2-core CPU (full: 4 epochs on all 60,000 images, 3 seeds); --quick runs each in about
a minute (2 epochs on 3,000 images, one seed) for the test suite.

`alexnet experiment all` trains each distinct run once: most experiments' first arm is
the recipe unchanged (ReLU, LRN, overlapping pooling and two towers are its defaults), so
a run is known by what it would train (run_key: the resolved RunConfig, seed included,
and the image limits; not the arm's label) and an experiment that needs a run an earlier
one trained links its arm's folder to that run's (a copy where links are refused).
results.json ("reused") and results.md say which runs came from another experiment.

Every file is written atomically (jsonio.atomic_write), the runs' by train; a copied run
goes to a hidden folder first and is renamed into place, so a full disk leaves the
previous results as they were and one line (DiskFull) naming the file and the free space.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..core.recipes import resolve
from ..run.errors import FULL_ERRNOS, DiskFull, UserError, full_errno
from ..run.jsonio import atomic_write, write_json

if TYPE_CHECKING:
    from collections.abc import Callable

    from ..config import RunConfig

# The training error a linear classifier reaches on Fashion-MNIST (logistic regression is
# about 84% accurate, i.e. 16% error): crossing 15% means the network has learned features
# a linear model cannot. The paper's 25% on CIFAR-10 plays the same role there (§3.1).
RELU_THRESHOLD = 0.15


@dataclass(frozen=True)
class Experiment:
    claim: str  # the paper's claim, with its section
    arms: dict  # arm label -> model options changed (the first arm is the paper's)


EXPERIMENTS = {
    "relu-vs-tanh": Experiment(
        "§3.1, Figure 1: a network with ReLUs reaches a training error threshold (25% on "
        "CIFAR-10) six times faster than the same network with tanh units.",
        {"ReLU": {"activation": "relu"}, "tanh": {"activation": "tanh"}},
    ),
    "lrn": Experiment(
        "§3.3: local response normalization reduces the top-1 error by 1.4 points on ImageNet "
        "(13% -> 11% test error on CIFAR-10).",
        {"LRN": {"lrn": True}, "no LRN": {"lrn": False}},
    ),
    "pooling": Experiment(
        "§3.4: overlapping pooling (3/2) reduces the top-1 error by 0.4 points against 2/2, "
        "and overfits slightly less.",
        {"overlapping 3/2": {"pooling": "overlap"}, "non-overlapping 2/2": {"pooling": "nonoverlap"}},
    ),
    "dropout": Experiment(
        "§4.2: without dropout the network overfits substantially; dropout roughly doubles "
        "the iterations needed to converge.",
        {"dropout 0.5": {"dropout": 0.5}, "no dropout": {"dropout": 0.0}},
    ),
    "groups": Experiment(
        "§3.2: the two-tower (two-GPU) network beats a one-tower network (the paper's has "
        "half the kernels; here the same kernels, ungrouped) by 1.7 / 1.2 points.",
        {"two towers": {"groups": True}, "one tower": {"groups": False}},
    ),
}


@dataclass(frozen=True)
class Size:
    epochs: int
    seeds: int
    limit_train: int | None
    limit_val: int | None


FULL = Size(epochs=4, seeds=3, limit_train=None, limit_val=None)
QUICK = Size(epochs=2, seeds=1, limit_train=3000, limit_val=1000)


def crossing(xs: list[float], errors: list[float], threshold: float) -> float | None:
    """First x where the error falls to `threshold`, linear between the measured points
    (from (0, 0.9): chance on 10 classes); None if it never does."""
    px, pe = 0.0, 0.9
    for x, e in zip(xs, errors):
        if e <= threshold:
            return px + (x - px) * (pe - threshold) / (pe - e) if pe != e else x
        px, pe = x, e
    return None


def _spread(values: list[float]) -> dict:
    values = [v for v in values if v is not None]
    if not values:
        return {"mean": None, "std": None, "n": 0}
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "n": len(values),
    }


def run_key(cfg: RunConfig, limit_train: int | None, limit_val: int | None) -> str:
    """What identifies a training run: its resolved configuration (seed, epochs, model,
    data and data folder included) and its image limits, without its output folder."""
    d = cfg.to_dict()
    d["train"] = {k: v for k, v in d["train"].items() if k != "out"}
    blob = json.dumps({"config": d, "limit_train": limit_train, "limit_val": limit_val}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _run_dir_name(arm: str, seed: int) -> str:
    return f"{arm.replace(' ', '-').replace('/', '')}-seed{seed}"


def _clear(path: Path) -> None:
    """Remove what an earlier invocation left at an arm's run folder: a link (never what
    it points to) or the folder."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def _reuse(source: Path, run_dir: Path) -> None:
    """Make `run_dir` show the run trained in `source`: a relative link, else a copy."""
    _clear(run_dir)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.symlink(os.path.relpath(source, run_dir.parent), run_dir, target_is_directory=True)
    except OSError:  # no links on this file system (or no right to make them)
        _copy_run(source, run_dir)


def _copy_run(source: Path, run_dir: Path) -> None:
    """A copy of the run folder `source` at `run_dir`, whole or not at all."""
    partial = run_dir.with_name(f".{run_dir.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        shutil.copytree(source, partial)
        os.replace(partial, run_dir)
    except (OSError, shutil.Error) as e:
        shutil.rmtree(partial, ignore_errors=True)
        # shutil.Error gathers the files' errors as text: look for the errno there too
        code = full_errno(e) or next((c for c in FULL_ERRNOS if f"[Errno {c}]" in str(e)), None)
        if code is None:
            raise
        raise DiskFull(run_dir, code, f"{source} is not copied; reuse it again once there is room") from e


def run(
    name: str,
    data: str = "fashion-mnist",
    data_dir: str | None = None,
    seeds: int | None = None,
    quick: bool = False,
    out: str = "experiments",
    train_fn: Callable[[RunConfig], dict] | None = None,
    trained: dict | None = None,
) -> dict:
    """Train every arm of experiment `name` with every seed; write and return the results.

    `trained` (run_key -> run folder), shared between calls, makes a run that an earlier
    call trained be reused instead of trained again (`alexnet experiment all`); the runs
    this call trains are added to it."""
    from ..core.rundir import read_metrics  # torch: imported here, so that the parser lists EXPERIMENTS without it
    from ..core.train import train

    train_fn = train_fn or train
    trained = {} if trained is None else trained
    exp, size = EXPERIMENTS[name], QUICK if quick else FULL
    seeds = seeds or size.seeds
    folder = Path(out) / name
    runs: dict[str, list[list[dict]]] = {}
    reused = []
    for arm, options in exp.arms.items():
        runs[arm] = []
        for seed in range(seeds):
            run_dir = folder / _run_dir_name(arm, seed)
            cfg = resolve(
                data,
                {"name": None, **options},
                {"data_dir": data_dir, "limit_train": size.limit_train, "limit_val": size.limit_val},
                {"epochs": size.epochs, "seed": seed, "out": str(run_dir), "val_every": 1},
            )
            key = run_key(cfg, size.limit_train, size.limit_val)
            source = trained.get(key)
            if source is None:
                if run_dir.is_symlink():  # an earlier `all` linked it: train here, not there
                    run_dir.unlink()
                train_fn(cfg)
                trained[key] = run_dir
            elif os.path.abspath(source) != os.path.abspath(run_dir):
                _reuse(Path(source), run_dir)
                origin = os.path.relpath(source, out)
                reused.append({"arm": arm, "seed": seed, "run": origin, "key": key})
                print(
                    f"alexnet experiment {name}: {arm}, seed {seed}: the same configuration as "
                    f"{origin}, reused (not trained again)",
                    flush=True,
                )
            runs[arm].append(read_metrics(run_dir))
    results = aggregate(name, runs, seeds, size)
    results["reused"] = reused
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "results.json", results)
    text = table(results)
    atomic_write(folder / "results.md", lambda tmp: Path(tmp).write_text(text))
    plot(results, runs, folder / "results.png")
    return results


def aggregate(name: str, runs: dict, seeds: int, size: Size) -> dict:
    arms = {}
    for arm, seed_rows in runs.items():
        final = [rows[-1] for rows in seed_rows]
        train_err = [1 - r["train_acc"] for r in final]
        test_err = [1 - r["val_top1"] for r in final]
        arms[arm] = {
            "test_error": _spread(test_err),
            "train_error": _spread(train_err),
            "gap": _spread([te - tr for te, tr in zip(test_err, train_err)]),
            "seconds": _spread([sum(r["epoch_seconds"] for r in rows) for rows in seed_rows]),
        }
    if name == "relu-vs-tanh":
        for arm, seed_rows in runs.items():
            errors = [[1 - r["train_acc"] for r in rows] for rows in seed_rows]
            epochs = [crossing([r["epoch"] for r in rows], e, RELU_THRESHOLD) for rows, e in zip(seed_rows, errors)]
            secs = [
                crossing(_cumulative([r["epoch_seconds"] for r in rows]), e, RELU_THRESHOLD)
                for rows, e in zip(seed_rows, errors)
            ]
            arms[arm]["epochs_to_threshold"] = _spread(epochs)
            arms[arm]["seconds_to_threshold"] = _spread(secs)
    if name == "dropout":
        # iterations to converge: epochs until the training error is within 1 point of
        # the arm's own final training error
        for arm, seed_rows in runs.items():
            arms[arm]["epochs_to_converge"] = _spread(
                [
                    crossing(
                        [r["epoch"] for r in rows], [1 - r["train_acc"] for r in rows], 1 - rows[-1]["train_acc"] + 0.01
                    )
                    for rows in seed_rows
                ]
            )
    labels = list(runs)
    paper, other = arms[labels[0]], arms[labels[1]]
    effect = {"test_error_difference": _diff(other["test_error"], paper["test_error"])}
    if name == "relu-vs-tanh":
        effect["speedup_epochs"] = _ratio(other["epochs_to_threshold"], paper["epochs_to_threshold"])
        effect["speedup_seconds"] = _ratio(other["seconds_to_threshold"], paper["seconds_to_threshold"])
    if name == "dropout":
        effect["gap_difference"] = _diff(other["gap"], paper["gap"])
        effect["convergence_ratio"] = _ratio(paper["epochs_to_converge"], other["epochs_to_converge"])
    return {
        "experiment": name,
        "claim": EXPERIMENTS[name].claim,
        "seeds": seeds,
        "epochs": size.epochs,
        "limit_train": size.limit_train,
        "limit_val": size.limit_val,
        "arms": arms,
        "effect": effect,
    }


def _cumulative(xs: list[float]) -> list[float]:
    total, out = 0.0, []
    for x in xs:
        total += x
        out.append(total)
    return out


def _diff(a: dict, b: dict) -> float | None:
    return None if a["mean"] is None or b["mean"] is None else a["mean"] - b["mean"]


def _ratio(a: dict, b: dict) -> float | None:
    return None if not a["mean"] or not b["mean"] else a["mean"] / b["mean"]


def _fmt(s: dict, percent: bool = True) -> str:
    if s["mean"] is None:
        return "not reached"
    scale, unit = (100, "%") if percent else (1, "")
    return f"{s['mean'] * scale:.2f}{unit} ± {s['std'] * scale:.2f}"


def table(results: dict) -> str:
    rows = [
        f"# {results['experiment']}",
        "",
        results["claim"],
        "",
        f"{results['seeds']} seed(s), {results['epochs']} epochs, "
        f"training images: {results['limit_train'] or 'all'}; mean ± standard deviation.",
        "",
        "| arm | test error | training error | gap (test - train) | training seconds |",
        "|---|---|---|---|---|",
    ]
    for arm, a in results["arms"].items():
        rows.append(
            f"| {arm} | {_fmt(a['test_error'])} | {_fmt(a['train_error'])} | {_fmt(a['gap'])} | "
            f"{_fmt(a['seconds'], percent=False)} |"
        )
    extra = {k: a for k, a in results["arms"].items() if "epochs_to_threshold" in a or "epochs_to_converge" in a}
    for arm, a in extra.items():
        if "epochs_to_threshold" in a:
            rows.append(
                f"\n{arm}: training error {RELU_THRESHOLD:.0%} reached at epoch "
                f"{_fmt(a['epochs_to_threshold'], False)}, after "
                f"{_fmt(a['seconds_to_threshold'], False)} s"
            )
        if "epochs_to_converge" in a:
            rows.append(
                f"\n{arm}: within 1 point of its final training error at epoch {_fmt(a['epochs_to_converge'], False)}"
            )
    if results.get("reused"):
        rows.append(
            "\nReused (the same configuration, trained once for another experiment): "
            + ", ".join(f"{r['arm']} seed {r['seed']} = {r['run']}" for r in results["reused"])
        )
    rows += [
        "",
        "Effect: "
        + ", ".join(f"{k} = {v:.4g}" if v is not None else f"{k} = n/a" for k, v in results["effect"].items()),
        "",
    ]
    return "\n".join(rows)


def plot(results: dict, runs: dict, path: Path) -> None:
    try:
        import matplotlib
    except ImportError as e:
        raise UserError(f"{path}: the figure needs matplotlib: pip install 'alexnet[figures]'") from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    speed = results["experiment"] == "relu-vs-tanh"
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    for arm, seed_rows in runs.items():
        for i, rows in enumerate(seed_rows):
            kw = {"color": "C0" if arm == list(runs)[0] else "C1", "alpha": 0.8, "label": arm if i == 0 else None}
            epochs = [r["epoch"] for r in rows]
            train_err = [1 - r["train_acc"] for r in rows]
            axes[0].plot(epochs, train_err, "-o", **kw)
            if speed:
                axes[1].plot(_cumulative([r["epoch_seconds"] for r in rows]), train_err, "-o", **kw)
            else:
                axes[1].plot(epochs, [1 - r["val_top1"] for r in rows], "-o", **kw)
    axes[0].set(xlabel="epoch", ylabel="training error", title="training error")
    if speed:
        axes[1].set(xlabel="wall-clock seconds", ylabel="training error", title="against time")
        for ax in axes:
            ax.axhline(RELU_THRESHOLD, color="gray", linestyle="--", linewidth=1)
    else:
        axes[1].set(xlabel="epoch", ylabel="test error", title="test error")
    for ax in axes:
        ax.legend()
        ax.grid(alpha=0.3)
    fig.suptitle(f"{results['experiment']} ({results['seeds']} seed(s))")
    fig.tight_layout()
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    finally:
        plt.close(fig)
