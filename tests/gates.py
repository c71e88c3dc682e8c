"""`alexnet train` in a subprocess that stops at a chosen point until the test lets it go on.

Tests that signal or kill a training run (test_signals.py, test_kill.py) need it to be at a
known point when the signal arrives: in the second epoch, while it writes last.pt, ... A
delay (sleep, then signal) is a guess that a slow or busy machine gets wrong. Here the run
itself says when it is there, and waits:

    proc = start(["train", ...], "replaced,step:5", stderr=log)
    wait_for_gate(proc)          # the run is now paused at that point
    proc.send_signal(...)        # or proc.kill()
    release(proc)                # the run goes on (not needed after a kill)

The child is `python tests/gates.py GATE ARGV...`: alexnet.apps.cli.main(ARGV) in that process,
with hooks that only watch (the same code runs on the same data and writes the same bytes).
GATE is a comma-separated sequence of events `kind[:n]` (n defaults to 1), passed in order:
each counts from the moment the one before it was passed, and when the last one has
happened n times, the run writes `gate closed: GATE (pid PID)` on stdout and waits for a
line on stdin (gate_pid reads PID from it: under torchrun the gated process is a worker, not
the process the test started). Events:

    loaded    torch.load of a file named last.pt returned (a resumed run has read it)
    step      an optimiser step finished (any torch.optim optimiser)
    writing   half of the bytes of last.pt's temp file are written and flushed, the
              other half not yet (a checkpoint being written)
    written   last.pt's temp file is complete and fsynced, not yet renamed over last.pt
    replaced  the rename over last.pt returned (a checkpoint was just saved)

A torchrun job that restarts its workers (--max-restarts) starts this script again with the
same GATE: `A/B/C` gives its first start gate A, the first restart B, the second C (and any
later one C; torchrun says which start it is in TORCHELASTIC_RESTART_COUNT, 0 outside it).

Only the waiting for a condition has a deadline (DEADLINE), as a safety net against a hang;
what a test checks never depends on how long anything took.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import selectors
import subprocess
import sys
import time
from pathlib import Path

DEADLINE = 600.0  # seconds; only a safety net against a run that hangs
TARGET = "last.pt"
CLOSED = b"gate closed: "


# ------------------------------------------------------------------ the test's side


def start(argv, gate: str, env: dict | None = None, stderr=None) -> subprocess.Popen:
    """`alexnet ARGV...` in a subprocess that pauses at `gate` (stdout and stdin are pipes)."""
    return subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), gate, *map(str, argv)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=stderr,
        env=env,
    )


def wait_for_gate(proc: subprocess.Popen, marker: bytes = CLOSED, deadline: float = DEADLINE) -> str:
    """Read the run's stdout until its gate closes (`marker` appears); returns what it
    printed until then. Fails if the run ends first."""
    fd, out = proc.stdout.fileno(), b""
    end = time.monotonic() + deadline
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while marker not in out:
            left = end - time.monotonic()
            assert left > 0, f"safety net: no {marker!r} after {deadline:.0f} s:\n{out.decode()[-3000:]}"
            if sel.select(left):
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    rc = proc.wait()
                    raise AssertionError(f"the run ended (rc {rc}) before {marker!r}:\n{out.decode()[-3000:]}")
                out += chunk
    return out.decode()


def gate_pid(printed: str) -> int:
    """The process id in the last `gate closed` line of `printed` (wait_for_gate's return)."""
    return int(re.findall(r"gate closed: .* \(pid (\d+)\)", printed)[-1])


def release(proc: subprocess.Popen) -> None:
    """Let a paused run go on."""
    proc.stdin.write(b"go\n")
    proc.stdin.flush()


# ------------------------------------------------------------------ the child's side


class _Gate:
    def __init__(self, spec: str):
        self.spec = spec
        self.stages = []
        for part in spec.split(","):
            kind, _, n = part.strip().partition(":")
            assert kind in ("loaded", "step", "writing", "written", "replaced"), kind
            self.stages.append([kind, int(n or 1)])

    def event(self, kind: str) -> None:
        if not self.stages or self.stages[0][0] != kind:
            return
        self.stages[0][1] -= 1
        if self.stages[0][1] == 0:
            self.stages.pop(0)
            if not self.stages:
                sys.stdout.flush()
                os.write(1, CLOSED + f"{self.spec} (pid {os.getpid()})\n".encode())
                sys.stdin.readline()  # until the test says go (or kills this process)


def _install(gate: _Gate) -> None:
    import torch
    from torch.optim.optimizer import register_optimizer_step_post_hook

    register_optimizer_step_post_hook(lambda optimizer, args, kwargs: gate.event("step"))

    real_load, real_save, real_replace = torch.load, torch.save, os.replace

    def is_target(path) -> bool:
        return isinstance(path, (str, os.PathLike)) and Path(path).name == TARGET

    def is_target_temp(f) -> bool:  # atomic_write's .last.pt.<random>.tmp, or a file open on it
        path = f if isinstance(f, (str, os.PathLike)) else getattr(f, "name", None)
        if not isinstance(path, (str, os.PathLike)):
            return False
        name = Path(path).name
        return name.startswith(f".{TARGET}.") and name.endswith(".tmp")

    def load(f, *args, **kwargs):
        obj = real_load(f, *args, **kwargs)
        if is_target(f):
            gate.event("loaded")
        return obj

    def save(obj, f, *args, **kwargs):
        if not is_target_temp(f):
            return real_save(obj, f, *args, **kwargs)
        buffer = io.BytesIO()  # the same bytes torch.save writes, in two halves
        real_save(obj, buffer, *args, **kwargs)
        data = buffer.getvalue()
        with open(f, "wb") if isinstance(f, (str, os.PathLike)) else contextlib.nullcontext(f) as file:
            file.write(data[: len(data) // 2])
            file.flush()
            gate.event("writing")
            file.write(data[len(data) // 2 :])

    def replace(src, dst, *args, **kwargs):
        if is_target(dst):
            gate.event("written")
        real_replace(src, dst, *args, **kwargs)
        if is_target(dst):
            gate.event("replaced")

    torch.load, torch.save, os.replace = load, save, replace


def _this_start(gate: str) -> str:
    """The gate of this start of a torchrun job (`A/B/C`: see above)."""
    gates = gate.split("/")
    return gates[min(int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")), len(gates) - 1)]


if __name__ == "__main__":
    _install(_Gate(_this_start(sys.argv[1])))
    from alexnet.apps.cli import main

    sys.exit(main(sys.argv[2:]))
