"""The package's one JSON writer: RFC 8259 JSON, even when a number is NaN or infinite;
and atomic_write, which every file the package rewrites whole (JSON, checkpoints, weights,
caches, PNGs) goes through. (Files that grow, metrics.csv and a pack's shards, are appended
to and cut back to their last good length instead.)

Python's json.dumps writes NaN, Infinity and -Infinity for non-finite floats, which no
JSON standard allows: strict parsers (JavaScript's JSON.parse, jq, Go's encoding/json,
Rust's serde_json) reject the whole document. A diverged model gives exactly such values
(a NaN loss, an infinite distance), so every `--json` output and JSON file goes through
here instead.

Convention: a non-finite float becomes null, and the nearest dict that contains it gets a
field `non_finite` naming where it was and what it was ("nan", "inf" or "-inf"):

    {"loss": nan}                      -> {"loss": null, "non_finite": {"loss": "nan"}}
    {"eigval": [1.0, inf]}             -> {"eigval": [1.0, null], "non_finite": {"eigval[1]": "inf"}}
    {"q": [{"d": -inf}]}               -> {"q": [{"d": null, "non_finite": {"d": "-inf"}}]}

The path is relative to that dict: its key, then [i] for each list index on the way down.
A non-finite number with no dict above it (a bare top-level list) becomes null without a
record: there is nowhere to put one. 0-d torch tensors, numpy scalars and arrays are
converted to plain numbers and lists first. Serialising with allow_nan=False means any value
this misses raises ValueError instead of writing invalid JSON.
"""

from __future__ import annotations

import glob
import json
import math
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import DiskFull, full_errno

if TYPE_CHECKING:
    from collections.abc import Callable

NON_FINITE = "non_finite"  # the field that records which values were nulled


def _kind(x: float) -> str:
    return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")


def _plain(obj: Any) -> Any:
    # torch tensors, numpy arrays and numpy scalars all have tolist(): 0-d ones give a
    # Python number; duck typing keeps this module free of torch and numpy imports
    if not isinstance(obj, (str, bytes, int, float, dict, list, tuple)) and hasattr(obj, "tolist"):
        return obj.tolist()
    return obj


def _clean(obj: Any, path: str, nulled: dict[str, str] | None) -> Any:
    """`obj` with non-finite floats as None, each recorded in `nulled` under its path."""
    obj = _plain(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        if nulled is not None:
            nulled[path] = _kind(obj)
        return None
    if isinstance(obj, dict):
        return _clean_dict(obj)
    if isinstance(obj, (list, tuple)):
        return [_clean(v, f"{path}[{i}]", nulled) for i, v in enumerate(obj)]
    return obj


def _clean_dict(d: dict) -> dict:
    nulled: dict[str, str] = {}
    out = {k: _clean(v, str(k), nulled) for k, v in d.items()}
    if nulled:
        if NON_FINITE in out:  # overwriting it would lose data: fail loudly instead
            raise ValueError(f"a dict with non-finite values already has a {NON_FINITE!r} field")
        out[NON_FINITE] = nulled
    return out


def sanitize(obj: Any) -> Any:
    """A copy of `obj` that strict JSON can hold: non-finite floats nulled and recorded."""
    return _clean(obj, "", None)


def to_json(obj: Any, indent: int | None = 2) -> str:
    """RFC 8259 JSON text of `obj` (indent=None: one line, as json.dumps writes by default)."""
    return json.dumps(sanitize(obj), indent=indent, allow_nan=False)


def write_json(path: str | Path, obj: Any, indent: int | None = 2) -> None:
    """Write to_json(obj) and a newline to `path` atomically: readers see old or new, never half."""
    text = to_json(obj, indent) + "\n"
    atomic_write(Path(path), lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def temporary_files(path: str | Path) -> list[Path]:
    """The temporary files atomic_write makes for `path` (`.NAME.<random>.tmp` beside it):
    any that exist when no write is under way were left by a killed writer."""
    path = Path(path)
    return sorted(path.parent.glob(f".{glob.escape(path.name)}.*.tmp"))


def atomic_write(path: Path, write: Callable[[str], object], sweep: bool = False) -> None:
    """write(tmp_path) then fsync and rename over `path`: a reader sees old or new, never half.

    The temporary file is `.NAME.<random>.tmp` beside `path` (temporary_files finds those a
    kill left). A write that fails removes it; one that finds no room (ENOSPC, EFBIG,
    EDQUOT) raises DiskFull naming `path` and the free space, `path` left as it was.
    `sweep`: once `path` is in place, remove the other temporary files of `path` (for files
    that no other writer could be writing at that moment, or whose loss costs nothing:
    a cache)."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        code = full_errno(e)
        if code is not None:
            kept = "the previous file is unchanged" if path.exists() else "nothing was written"
            raise DiskFull(path, code, kept) from e
        raise
    for stale in temporary_files(path) if sweep else []:
        stale.unlink(missing_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
