"""`alexnet pack SRC OUT`: read a dataset once into a store that training reads at the
speed of the cores, from ImageNet's three downloaded files or from an image folder
(sources.py says how each is found and ordered).

Every image is stored as what the loaders hand the device anyway: the central
resize x resize patch of §2 (shorter side to `resize`, centre square), as a JPEG
(`--format jpeg`, the default) or as raw uint8 C x H x W (`--format raw`). The random
crops, mirrors, mean subtraction and PCA lighting run on the device exactly as for the
folder (augment.py), so a raw store gives the folder's inputs bit for bit, and a JPEG
store the same up to the JPEG rounding. Why JPEG by default: ImageNet's 1,281,167
training images take 252 GB raw, 11x what they take as quality-90 JPEGs at 256
(docs/BENCHMARKS.md, "The ImageNet store"), so only the JPEG store fits the RAM of one
GPU machine; decoding a 256x256 JPEG costs a core about a third of a millisecond.

OUT, as store.py reads it:
    pack.json                 the manifest: format, version, encoding, quality, resize,
                              channels, classes (and readable names), and per split its
                              shards, count, unreadable files and fingerprint
    <split>-NNNNN.jpg | .u8   shards: the images' bytes back to back, SHARD_BYTES at most
    <split>-offsets.npy       int64, count + 1: image i is bytes offsets[i]:offsets[i + 1]
                              of the split's shards read one after the other
    <split>-labels.npy        int64 class indices
    <split>-sources.txt       each image's source (a path under SRC, or a tar member),
                              one a line: `alexnet pack --list OUT` prints them as CSV

Decoding runs in DataLoader worker processes on every core (--workers); the main process
only appends their bytes. A pack goes to OUT.partial and becomes OUT with one rename when
it is complete. Every CHECKPOINT_IMAGES images the files are flushed to disk and
OUT.partial/progress.json records how far they are valid, so a pack killed at any moment
(SIGKILL too) and run again with the same command continues from there: the files are cut
back to the recorded lengths, and since each image's bytes depend only on the image, the
finished store is the one an uninterrupted pack writes, bit for bit. A write that finds no
room (a full disk, `ulimit -f`, a quota) stops the pack with DiskFull, one line naming the
file and the free space; the files are cut back to the last progress record first (which
frees what was written since), so the same command continues once there is room.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from ..run.errors import DiskFull, UserError, full_errno
from ..run.jsonio import to_json, write_json
from .datasets import open_image, stored_transform
from .sources import SPLITS, Sources, SourceSplit, find_sources, limited
from .store import FORMAT, MANIFEST, SUFFIX

if TYPE_CHECKING:
    from collections.abc import Callable

VERSION = 2
ENCODINGS = ("jpeg", "raw")
# Chosen by measurement (docs/BENCHMARKS.md, "The ImageNet store"): PSNR against quality
# on ImageNet-like photos, bytes per image, and a short training on each store.
DEFAULT_QUALITY = 90
SHARD_BYTES = 1 << 32  # 4 GiB of images per shard file
CHECKPOINT_IMAGES = 4096  # images between two flushes of the files and of progress.json
PROGRESS = "progress.json"
CHANNELS = 3  # colour, as the folder path reads ImageNet


def _as_list(batch: list) -> list:
    return batch


def stored_image(split: SourceSplit, i: int, channels: int, resize: int, draft: int | None = None) -> torch.Tensor:
    """Image i of a source split as the loaders hand it to the device: decoded, the §2
    central resize x resize patch, uint8 (C, S, S). A UserError names the image when its
    bytes cannot be read or decoded."""
    where = split.where(i)
    try:
        data = split.read(i)
    except OSError as e:
        raise UserError(f"{where}: cannot read ({e})") from e
    return stored_transform(resize)(open_image(io.BytesIO(data), where, channels, draft))


class _Encode(torch.utils.data.Dataset):
    """Image i of a source split as the store keeps it: (bytes, None), or (None, reason)
    for a file that cannot be read (in a DataLoader worker process)."""

    def __init__(self, split: SourceSplit, train: bool, resize: int, encoding: str, quality: int) -> None:
        self.split, self.resize, self.encoding, self.quality = split, resize, encoding, quality
        # as data.folder_split: training images are only ever seen at `resize`, so libjpeg
        # may decode them at a reduced size; validation decodes every pixel
        self.draft = resize if train else None

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> tuple[bytes | None, str | None]:
        try:
            x = stored_image(self.split, i, CHANNELS, self.resize, self.draft)
        except UserError as e:
            return None, str(e)
        if self.encoding == "raw":
            return x.contiguous().numpy().tobytes(), None
        buf = io.BytesIO()
        Image.fromarray(x.permute(1, 2, 0).numpy()).save(buf, format="JPEG", quality=self.quality)
        return buf.getvalue(), None


@dataclass
class _SplitState:
    """How far one split's files are valid (progress.json)."""

    done: int = 0  # source images handled (written or skipped)
    count: int = 0  # images written
    shards: list[dict] = field(default_factory=list)  # {"file", "count", "bytes"}
    sources_bytes: int = 0
    unreadable: list[str] = field(default_factory=list)


class _SplitWriter:
    """Appends one split's images to its shards and side files in OUT.partial."""

    def __init__(self, tmp: Path, name: str, encoding: str, state: _SplitState) -> None:
        self.tmp, self.name, self.suffix, self.state = tmp, name, SUFFIX[encoding], state
        _cut_back(tmp, name, self.suffix, state)
        self.labels = open(self._path("labels.i64"), "ab")
        self.lengths = open(self._path("lengths.i64"), "ab")
        self.sources = open(self._path("sources.txt"), "ab")
        self.shard = open(tmp / state.shards[-1]["file"], "ab") if state.shards else None

    def _path(self, what: str) -> Path:
        return self.tmp / f"{self.name}-{what}"

    def add(self, data: bytes, label: int, source: str) -> None:
        s = self.state
        line = (source.replace("\n", " ") + "\n").encode()
        if self.shard is None or s.shards[-1]["bytes"] + len(data) > SHARD_BYTES:
            if self.shard is not None:
                self.shard.close()
            s.shards.append({"file": f"{self.name}-{len(s.shards):05d}{self.suffix}", "count": 0, "bytes": 0})
            self.shard = open(self.tmp / s.shards[-1]["file"], "ab")
        for f, content in (
            (self.shard, data),
            (self.labels, np.int64(label).tobytes()),
            (self.lengths, np.int64(len(data)).tobytes()),
            (self.sources, line),
        ):
            _guarded(f, f.write, content)
        s.shards[-1]["count"] += 1
        s.shards[-1]["bytes"] += len(data)
        s.sources_bytes += len(line)
        s.count += 1

    def flush(self) -> None:
        for f in (self.shard, self.labels, self.lengths, self.sources):
            if f is not None:
                _guarded(f, f.flush)
                _guarded(f, os.fsync, f.fileno())

    def close(self) -> None:
        """Close the files; what a failed write left in their buffers is dropped (the files
        are cut back to progress.json's lengths before they are used again)."""
        for f in (self.shard, self.labels, self.lengths, self.sources):
            if f is not None:
                with contextlib.suppress(OSError):
                    f.close()

    def finish(self) -> str:
        """The side files as the store keeps them (the appended ones stay until the manifest
        is written); returns the split's fingerprint."""
        self.close()
        lengths = np.fromfile(self._path("lengths.i64"), dtype=np.int64)
        np.save(self._path("labels.npy"), np.fromfile(self._path("labels.i64"), dtype=np.int64), allow_pickle=False)
        np.save(
            self._path("offsets.npy"), np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64), allow_pickle=False
        )
        digest = hashlib.sha1(self._path("sources.txt").read_bytes()).hexdigest()
        return f"{self.state.count}-{digest[:16]}"


def _guarded(f: io.BufferedWriter, op: Callable, *args: object) -> None:
    """op(*args) on `f`: a write that finds no room raises DiskFull naming f's file."""
    try:
        op(*args)
    except OSError as e:
        code = full_errno(e)
        if code is None:
            raise
        raise DiskFull(f.name, code) from e


def _cut_back(tmp: Path, name: str, suffix: str, s: _SplitState) -> None:
    """Truncate a split's files to what `s` (progress.json) says is valid; delete later shards."""
    for what, size in (("labels.i64", 8 * s.count), ("lengths.i64", 8 * s.count), ("sources.txt", s.sources_bytes)):
        with open(tmp / f"{name}-{what}", "ab") as f:
            f.truncate(size)
    known = {shard["file"]: shard["bytes"] for shard in s.shards}
    for path in tmp.glob(f"{name}-*{suffix}"):
        if path.name in known:
            with open(path, "r+b") as f:
                f.truncate(known[path.name])
        else:
            path.unlink()


def _no_room(tmp: Path, params: dict, e: BaseException, code: int) -> DiskFull:
    """After a write that found no room: OUT.partial cut back to its last progress record
    (freeing what was written since; all of it when there is none), as the error to raise."""
    progress = tmp / PROGRESS
    cause: BaseException | None = e
    while cause is not None and not isinstance(cause, DiskFull):
        cause = cause.__cause__ or cause.__context__
    path = cause.path if cause is not None else tmp
    if not progress.is_file():
        shutil.rmtree(tmp, ignore_errors=True)
        return DiskFull(
            path,
            code,
            f"nothing was kept: {tmp} is removed (it records its progress every {CHECKPOINT_IMAGES:,} images)",
        )
    saved = json.loads(progress.read_text())["splits"]
    for name in SPLITS:
        if name in saved:
            _cut_back(tmp, name, SUFFIX[params["format"]], _SplitState(**saved[name]))
        else:  # begun after the last record
            for path in tmp.glob(f"{name}-*"):
                path.unlink()
    for partial in tmp.glob("*.npy"):  # written again by the run that finishes
        partial.unlink()
    images = sum(state["count"] for state in saved.values())
    return DiskFull(path, code, f"{tmp} keeps {images:,} images: run the same command again once there is room")


def _complete(out_dir: Path, tmp: Path) -> None:
    """OUT.partial holds a finished store (its manifest written): drop the appended side
    files and put it in place with one rename."""
    for path in tmp.glob("*.i64"):
        path.unlink()
    if out_dir.exists():  # empty (checked at the start)
        out_dir.rmdir()
    os.replace(tmp, out_dir)


def _start(tmp: Path, params: dict, log: Callable[[str], None]) -> dict[str, _SplitState]:
    """The state of OUT.partial: continued if it was left by the same command, else new."""
    progress = tmp / PROGRESS
    if progress.is_file():
        try:
            saved = json.loads(progress.read_text())
        except ValueError as e:
            raise UserError(f"{progress}: unreadable ({e}); delete {tmp} to start again") from e
        if saved.get("params") != params:
            raise UserError(
                f"{tmp}: an interrupted pack with other options ({to_json(saved.get('params'), None)}); "
                f"run that command again to finish it, or delete {tmp}"
            )
        log(f"alexnet: continuing the interrupted pack in {tmp}")
        return {name: _SplitState(**state) for name, state in saved["splits"].items()}
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return {}


def _save_progress(tmp: Path, params: dict, states: dict[str, _SplitState]) -> None:
    write_json(tmp / PROGRESS, {"params": params, "splits": {n: vars(s) for n, s in states.items()}})


def pack(
    src: str,
    out: str,
    resize: int = 256,
    workers: int = -1,
    limit: int | None = None,
    encoding: str = "jpeg",
    quality: int = DEFAULT_QUALITY,
    val_labels: str | None = None,
    synsets: str | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Pack SRC's train and val splits into OUT (see the module docstring); returns the manifest."""
    if encoding not in ENCODINGS:
        raise UserError(f"--format {encoding}: must be one of {', '.join(ENCODINGS)}")
    if not 1 <= quality <= 95:
        raise UserError(f"--quality {quality}: must be between 1 and 95 (PIL's useful range)")
    if resize < 1:
        raise UserError(f"--resize {resize}: must be positive")
    out_dir = Path(out)
    tmp = out_dir.with_name(out_dir.name + ".partial")
    params = {"source": str(Path(src).resolve()), "resize": resize, "format": encoding, "limit": limit}
    if encoding == "jpeg":
        params["quality"] = quality
    if (tmp / MANIFEST).is_file() and not (tmp / PROGRESS).is_file():  # stopped while renaming
        manifest = json.loads((tmp / MANIFEST).read_text())
        if all(manifest.get(k) == params[k] for k in ("source", "resize")):
            _complete(out_dir, tmp)
            return manifest
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):  # before indexing the tars
        raise UserError(f"{out_dir}: exists and is not empty")
    sources = find_sources(Path(src), val_labels, synsets)  # a bad SRC: refused before OUT.partial exists
    states = _start(tmp, params, log)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    workers = cores if workers < 0 else workers  # the main process only appends bytes
    try:
        for name in SPLITS:
            split = limited(sources.splits[name], limit)
            state = states.setdefault(name, _SplitState())
            _pack_split(tmp, name, split, sources, state, params, states, workers, log)
        return _finish(out_dir, tmp, params, sources, states, log)
    except Exception as e:
        code = full_errno(e)
        if code is None:
            raise
        raise _no_room(tmp, params, e, code) from e


def _pack_split(
    tmp: Path,
    name: str,
    split: SourceSplit,
    sources: Sources,
    state: _SplitState,
    params: dict,
    states: dict[str, _SplitState],
    workers: int,
    log: Callable[[str], None],
) -> None:
    writer = _SplitWriter(tmp, name, params["format"], state)
    dataset = _Encode(split, name == "train", params["resize"], params["format"], params.get("quality", 0))
    batch = 32
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=[list(range(a, min(a + batch, len(split)))) for a in range(state.done, len(split), batch)],
        num_workers=workers,
        collate_fn=_as_list,
    )
    since = 0
    try:
        with tqdm(
            total=len(split), initial=state.done, desc=f"pack {name}", unit="img", dynamic_ncols=True, leave=False
        ) as bar:
            for items in loader:
                for data, reason in items:
                    i = state.done
                    if data is None:
                        state.unreadable.append(reason)
                    else:
                        writer.add(data, int(split.labels[i]), split.name(i))
                    state.done += 1
                since += len(items)
                bar.update(len(items))
                if since >= CHECKPOINT_IMAGES:
                    writer.flush()
                    _save_progress(tmp, params, states)
                    since = 0
        writer.flush()
        _save_progress(tmp, params, states)
    finally:
        writer.close()
    skipped = f", skipped {len(state.unreadable)} unreadable" if state.unreadable else ""
    log(f"alexnet: packed {state.count:,} {name} images ({sum(s['bytes'] for s in state.shards):,} bytes){skipped}")
    for reason in state.unreadable:
        log(f"  unreadable: {reason}")


def _finish(
    out_dir: Path, tmp: Path, params: dict, sources: Sources, states: dict[str, _SplitState], log: Callable[[str], None]
) -> dict:
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "encoding": params["format"],
        "source": params["source"],
        "source_kind": sources.kind,
        "resize": params["resize"],
        "channels": CHANNELS,
        "classes": sources.classes,
        "class_names": sources.class_names,
        "splits": {},
    }
    if params["format"] == "jpeg":
        manifest["quality"] = params["quality"]
    for name, state in states.items():
        fingerprint = _SplitWriter(tmp, name, params["format"], state).finish()
        manifest["splits"][name] = {
            "count": state.count,
            "shards": state.shards,
            "unreadable": state.unreadable,
            "fingerprint": fingerprint,
        }
    write_json(tmp / MANIFEST, manifest)
    (tmp / PROGRESS).unlink()  # from here OUT.partial is a finished store (see pack)
    _complete(out_dir, tmp)
    return manifest
