"""What `alexnet serve`'s request threads share, without HTTP: the checkpoint and its model,
the model's queue (admission.py), and what is computed once: the samples, the training
split and its fc7 index, the filters.

The fc7 index is built by the first request that needs it, on a copy of the model (the
forward hooks of `activations` are on the model itself) and outside the model's queue:
the other requests go on meanwhile. A neighbours request that finds it being built waits
for it, unless the build is expected to end later than the wait bound (Busy): expected
from its progress so far (images done in the time taken), or before its first batch
from the cost of a build measured before; with neither, it waits.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..core.checkpoint import load_inference
from ..core.engine import Classifier
from ..core.rundir import read_metrics
from ..data.datasets import load_split
from ..run.errors import UserError
from ..run.runtime import resolve_device
from .admission import MAX_WAIT, POLL, Admission, Busy, Costs, Gone
from .inspection import (
    activations,
    classify_image,
    filters,
    layer_shapes,
    occlusion,
    occlusion_grid,
    towers,
)
from .neighbors import INDEX_BATCH, Fc7Index, checkpoint_key, fc7_index, neighbors

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from ..data.loaders import Split

SAMPLES = 12  # images of the validation/test split offered by the page
MAX_K = 50  # neighbours a request may ask for
MAX_TOPK = 10_000
TEN_CROP = 10  # patches of the paper's 10-patch prediction


class NotFound(LookupError):
    """No such thing (a sample id): 404."""


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def find_checkpoint(target: Path) -> Path:
    """A run directory's last.pt, else its model.safetensors; a file is itself."""
    if not target.is_dir():
        return target  # load_inference names a missing or unreadable file
    for name in ("last.pt", "model.safetensors"):
        if (target / name).is_file():
            return target / name
    raise UserError(f"{target}: no last.pt or model.safetensors in this directory (not a run directory?)")


def _never_gone() -> bool:
    return False


class _Counted:
    """A loader that counts the images it has handed out and seen processed (the index
    build's progress); anything else is the loader's."""

    def __init__(self, loader: Any) -> None:
        self._loader, self.done = loader, 0

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for images, labels in self._loader:
            yield images, labels
            self.done += len(labels)  # the caller asked for the next batch: this one is done

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)


@dataclasses.dataclass
class _Build:
    """An fc7 index being built: its progress and, if an index was built before, the cost
    measured then."""

    loader: _Counted
    images: int
    measured: float | None
    began: float = dataclasses.field(default_factory=time.monotonic)

    def left(self) -> float | None:
        """Expected seconds to its end: from its progress, else from the cost measured
        before; None (unknown: a request waits for it) before its first batch is done."""
        elapsed = time.monotonic() - self.began
        if self.loader.done:
            return elapsed * (self.images - self.loader.done) / self.loader.done
        return None if self.measured is None else max(0.0, self.measured - elapsed)


class Session:
    """One served checkpoint: its model behind `admission`, what each kind of request
    costs (`costs`), and what is computed once."""

    def __init__(self, target: str | Path, device: str = "auto", max_wait: float = MAX_WAIT) -> None:
        target = Path(target)
        self.checkpoint = find_checkpoint(target)
        self.key = checkpoint_key(self.checkpoint)  # before loading: the index is of this file
        self.loaded = load_inference(self.checkpoint, resolve_device(device))
        self.config = self.loaded.config
        # no DataLoader worker processes forked from a server thread; the index of a big
        # folder is better built beforehand by `alexnet neighbors`, which uses them
        self.data = dataclasses.replace(self.config.data, workers=0)
        parent = self.checkpoint.parent
        is_run = (parent / "metrics.csv").is_file() or (parent / "config.json").is_file()
        self.run_dir = target if target.is_dir() else parent if is_run else None
        self.layers = layer_shapes(self.loaded)
        self.admission, self.costs = Admission(max_wait), Costs()
        self._data_lock = threading.Lock()
        self._samples: dict[int, tuple[str, torch.Tensor]] | None = None
        self._train: Split | str | None = None  # the split, or why it cannot be read
        self._index: Fc7Index | None = None
        self._index_cond = threading.Condition()
        self._building: _Build | None = None
        self._filters: dict | None = None

    def readable_name(self, cls: str) -> str:
        return dict(zip(self.loaded.classes, self.loaded.class_names)).get(cls, cls)

    def samples(self) -> dict[int, tuple[str, torch.Tensor]]:
        """SAMPLES images of the validation/test split (a fixed draw), by their index in
        it: their readable label and uint8 image. Empty if the data is not readable here."""
        with self._data_lock:
            if self._samples is None:
                self._samples = {}
                try:
                    split = load_split(False, self.data, 64, ordered=True)
                    pick = torch.randperm(split.size, generator=torch.Generator().manual_seed(0))[:SAMPLES]
                    images, labels = split.loader.items(sorted(pick.tolist())) if split.size else ([], [])
                    for i, y, img in zip(sorted(pick.tolist()), labels, images):
                        self._samples[i] = (self.readable_name(split.classes[y]), img)
                except UserError as e:
                    _log(f"alexnet: no sample images: {e}")
            return self._samples

    def sample(self, sample_id: int) -> torch.Tensor:
        found = self.samples().get(sample_id)
        if found is None:
            raise NotFound(f"no sample {sample_id} (GET /api/samples lists them)")
        return found[1]

    def train_split(self) -> Split:
        """The training split the model was trained on (its --limit-train), every image
        once in file order, strict (a skipped file would shift the index's positions)."""
        with self._data_lock:
            if self._train is None:
                try:
                    strict = dataclasses.replace(self.data, strict=True)
                    self._train = load_split(True, strict, INDEX_BATCH, ordered=True)
                except UserError as e:
                    self._train = f"no neighbours: the training data is not readable here ({e})"
            if isinstance(self._train, str):
                raise UserError(self._train)
            return self._train

    def has_index(self) -> bool:
        try:
            return self.train_split().size > 0
        except UserError:
            return False

    # --------------------------------------------------------------- the model's requests

    def index(self, gone: Callable[[], bool] = _never_gone) -> Fc7Index:
        """The fc7 index; built_seconds is what this call spent on it, 0 once it is in
        memory. Built here if nobody is building it; else waited for (Gone if the client
        leaves), unless the build is expected to end later than the bound (Busy)."""
        with self._index_cond:
            while self._index is None and self._building is not None:
                left = self._building.left()
                if left is not None and left > self.admission.max_wait:
                    raise Busy.waiting(left, self.admission.max_wait)
                self._index_cond.wait(POLL)
                if gone():
                    raise Gone
            if self._index is not None:
                return dataclasses.replace(self._index, built_seconds=0.0)
            split = self.train_split()
            measured = self.costs.estimate("index", split.size) if self.costs.measured("index") else None
            self._building = building = _Build(_Counted(split.loader), split.size, measured)
        index = None
        try:
            # a copy of the network: activations puts its hooks on the served model itself
            net = Classifier(copy.deepcopy(self.loaded.model), self.loaded.preprocess, self.loaded.precision)
            counted = dataclasses.replace(split, loader=building.loader)
            index = fc7_index(net, counted, self.checkpoint, self.key, self.data.limit_train)
            index = dataclasses.replace(index, split=split)
            del net
            if index.built_seconds > 0:
                self.costs.record("index", index.built_seconds, split.size)
        finally:
            with self._index_cond:
                self._index = index if index is not None else self._index
                self._building = None
                self._index_cond.notify_all()
        return index

    def admissible(self, action: str, params: dict[str, Any]) -> None:
        """Busy now if a request of this kind would be refused by the model's queue: said
        before its body is read."""
        cost = self.costs.estimate(action, request_units(action, params, self.config.model.input_size))
        wait = self.admission.expected_wait(cost)
        if wait > self.admission.max_wait:
            raise Busy.waiting(wait, self.admission.max_wait)

    def inspect(
        self, action: str, image: torch.Tensor, params: dict[str, Any], gone: Callable[[], bool] = _never_gone
    ) -> dict:
        """One computation of the API on a uint8 image: its turn of the model (admission:
        Busy or Gone), the model, and the cost measured; "seconds" is the model's time."""
        index = self.index(gone) if action == "neighbors" else None
        units = request_units(action, params, self.config.model.input_size)
        with self.admission.turn(self.costs.estimate(action, units), gone):
            start = time.perf_counter()
            result = self._compute(action, image, params, index)
            took = time.perf_counter() - start
        self.costs.record(action, took, units)
        result["seconds"] = took
        return result

    def _compute(self, action: str, image: torch.Tensor, params: dict[str, Any], index: Fc7Index | None) -> dict:
        if action == "predict":
            return classify_image(self.loaded, image, params["topk"], params["ten_crop"])
        if action == "activations":
            return activations(self.loaded, image)
        if action == "occlusion":
            return occlusion(self.loaded, image, params["window"], params["stride"])
        assert index is not None
        return neighbors(self.loaded, index, image, params["k"])

    # --------------------------------------------------------------- the GET endpoints

    def health(self) -> dict:
        from .. import __version__

        m = self.config.model
        return {
            "status": "ok",
            "checkpoint": str(self.checkpoint),
            "model": m.name,
            "classes": m.num_classes,
            "input_size": m.input_size,
            "channels": m.in_channels,
            "version": __version__,
        }

    def info(self) -> dict:
        m = self.config.model
        return {
            "checkpoint": str(self.checkpoint),
            "model": m.name,
            "config": self.config.to_dict(),
            "classes": self.loaded.class_names,
            "input_size": m.input_size,
            "channels": m.in_channels,
            "towers": towers(self.loaded.model),
            "layers": self.layers,
            "has_run": self.run_dir is not None and (self.run_dir / "metrics.csv").is_file(),
            "has_samples": bool(self.samples()),
            "has_index": self.has_index(),
        }

    def sample_list(self) -> dict:
        return {
            "samples": [
                {"id": i, "label": label, "url": f"/api/samples/{i}.png"} for i, (label, _) in self.samples().items()
            ]
        }

    def filter_grids(self) -> dict:
        with self._data_lock:
            if self._filters is None:
                self._filters = filters(self.loaded.model)
            return self._filters

    def run_files(self) -> dict:
        """The run directory's config.json, metrics.csv (its rows so far) and summary.json
        (null while the run goes on); nulls and no rows without a run directory."""
        if self.run_dir is None:
            return {"config": None, "metrics": [], "summary": None}
        try:
            rows = read_metrics(self.run_dir)
        except UserError:  # no epoch finished yet
            rows = []
        return {
            "config": _read_json(self.run_dir / "config.json"),
            "metrics": rows,
            "summary": _read_json(self.run_dir / "summary.json"),
        }


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


# ----------------------------------------------------------------------------- parameters


def _int_param(query: dict[str, list[str]], name: str, default: int | None, lo: int, hi: int) -> int | None:
    text = (query.get(name) or [""])[-1]
    if text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise UserError(f"{name} must be a whole number, got {text[:40]!r}") from None
    if not lo <= value <= hi:
        raise UserError(f"{name} must be from {lo} to {hi}, got {value}")
    return value


def _bool_param(query: dict[str, list[str]], name: str) -> bool:
    text = (query.get(name) or ["0"])[-1].lower()
    if text not in ("0", "1", "false", "true", ""):
        raise UserError(f"{name} must be 0 or 1, got {text[:40]!r}")
    return text in ("1", "true")


def action_params(action: str, query: dict[str, list[str]], input_size: int) -> dict[str, Any]:
    """The query parameters of an action, checked (a UserError: 400)."""
    if action == "predict":
        return {"topk": _int_param(query, "topk", 5, 1, MAX_TOPK), "ten_crop": _bool_param(query, "ten_crop")}
    if action == "occlusion":
        return {
            "window": _int_param(query, "window", None, 1, input_size),
            "stride": _int_param(query, "stride", None, 1, input_size),
        }
    if action == "neighbors":
        return {"k": _int_param(query, "k", 6, 1, MAX_K)}
    return {}


def request_units(action: str, params: dict[str, Any], input_size: int) -> int:
    """What a request's cost is a multiple of: predict's patches, occlusion's window
    positions, one for the others (the index build is its own kind)."""
    if action == "predict":
        return TEN_CROP if params["ten_crop"] else 1
    if action == "occlusion":
        return len(occlusion_grid(input_size, params["window"], params["stride"])[2]) ** 2
    return 1
