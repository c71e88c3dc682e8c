"""The machine's measurements, kept between runs: the training-step and validation timings
behind a run's precision and budget, and the LRN kernel's check and timing (plan.py,
core/machine.py), in config.cache_dir()/measurements.json (strict JSON, written atomically).

Each is keyed by what it depends on: the CPU (or GPU) model, the torch version and threads,
and the model's shape and batch; so a second run of the same command on the same machine
starts training at once, and says in its header when the numbers were measured.
`alexnet train --remeasure` measures again (and stores the new numbers). A cache that
cannot be read is ignored, one that cannot be written is left as it was.
"""

from __future__ import annotations

import datetime
import json
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..config import cache_dir
from .jsonio import write_json

FILE = "measurements.json"
VERSION = 1


def cpu_model() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what platform says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_model(device: torch.device) -> str:
    """What a timing on `device` depends on: the GPU's name, or the CPU's model."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type}: {cpu_model()}"


def key(**fields: Any) -> str:
    """A measurement's key: `fields` (JSON values) with the torch version and threads."""
    return json.dumps(
        {**fields, "torch": torch.__version__, "threads": torch.get_num_threads()}, sort_keys=True, default=str
    )


def _path() -> Path:
    return cache_dir() / FILE


def _entries() -> dict[str, dict[str, dict]]:
    try:
        data = json.loads(_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("version") != VERSION or not isinstance(data.get("entries"), dict):
        return {}
    return data["entries"]


def recall(what: str, k: str) -> tuple[Any, str] | None:
    """The stored measurement `what` under key `k` and when it was taken, or None."""
    entry = _entries().get(what, {}).get(k)
    if not isinstance(entry, dict) or "value" not in entry:
        return None
    return entry["value"], str(entry.get("measured", "?"))


def remember(what: str, k: str, value: Any) -> None:
    """Store a measurement (read-modify-write of the file, replaced atomically)."""
    entries = _entries()
    measured = datetime.datetime.now().isoformat(sep=" ", timespec="minutes")
    entries.setdefault(what, {})[k] = {"value": value, "measured": measured}
    try:
        write_json(_path(), {"version": VERSION, "entries": entries})
    except OSError:  # a read-only cache: measured again next time
        pass


def measured(what: str, k: str, measure: Callable[[], Any], remeasure: bool = False) -> tuple[Any, str]:
    """(value, when it was measured if it came from the cache, else ""): the stored
    measurement, or measure() stored for next time."""
    hit = None if remeasure else recall(what, k)
    if hit is not None:
        return hit
    value = measure()
    remember(what, k, value)
    return value, ""
