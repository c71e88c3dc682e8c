"""A training process killed at any moment (SIGKILL: no handler runs, nothing is flushed)
leaves a loadable checkpoint behind, and a resumed run finishes the job.

`alexnet train` runs in a subprocess on a slice of Fashion-MNIST and is killed at five
points, each one reached by the run itself and announced before it is killed there
(tests/gates.py: the run pauses at the point, so nothing depends on timing): in the
second epoch of a fresh run, during the start-up of a resumed run (its checkpoint just
read), just after a resumed run replaced last.pt, while a resumed run is writing last.pt
(half its temp file written), and between that temp file's fsync and its rename. After
every kill OUT/last.pt must load with load_checkpoint (never half-written: atomic_write
renames a complete, fsynced temp file over it) and must not have gone back in epochs;
leftover temp files (.last.pt.<random>.tmp) are never named last.pt and are not loadable
checkpoints unless complete. A last `--resume OUT/last.pt` run completes all 6 epochs.
"""

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import gates
from alexnet.config import RunConfig
from alexnet.core.checkpoint import load_checkpoint, model_from_checkpoint
from alexnet.run.errors import UserError
from tiny import tiny_train_argv

pytestmark = pytest.mark.slow  # every test trains and SIGKILLs subprocesses

EPOCHS = 6
TEMP_NAME = re.compile(r"^\.(last|best)\.pt\.[^/]+\.tmp$|^\.model\.safetensors\.[^/]+\.tmp$")


def _env():
    # one math thread: on a shared 2-core machine two OpenMP threads that lose their core
    # to another process spin-wait, and training runs tens of times slower
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


_STARTED: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def _no_stray_runs():
    """A failed assertion must not leave a training run behind: kill the ones we started."""
    yield
    while _STARTED:
        proc = _STARTED.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                pipe.close()


def _argv(fashion_dir, out: Path, resume: bool) -> list:
    argv = tiny_train_argv(fashion_dir, 2000, 200, "--epochs", str(EPOCHS), "--out", str(out))
    return argv + (["--resume", str(out / "last.pt")] if resume else [])


def _start(fashion_dir, out: Path, log: Path, resume: bool) -> subprocess.Popen:
    """A run to its end (stdout and stderr in `log`)."""
    with open(log, "ab") as f:
        _STARTED.append(
            subprocess.Popen(
                [sys.executable, "-m", "alexnet", *_argv(fashion_dir, out, resume)],
                stdout=f,
                stderr=subprocess.STDOUT,
                env=_env(),
            )
        )
    return _STARTED[-1]


def _run_to(gate: str, fashion_dir, out: Path, log: Path, resume: bool) -> subprocess.Popen:
    """A run that pauses at `gate` (tests/gates.py), and is paused there when this returns."""
    with open(log, "ab") as f:
        _STARTED.append(gates.start(_argv(fashion_dir, out, resume), gate, env=_env(), stderr=f))
    printed = gates.wait_for_gate(_STARTED[-1])  # (if it fails, its message shows the output)
    with open(log, "a") as f:
        f.write(printed)
    return _STARTED[-1]


def _kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=gates.DEADLINE) == -signal.SIGKILL, "the run ended before it was killed"


def _check_after_kill(out: Path, previous_epoch: int) -> int:
    """last.pt loads and rebuilds its model; temp files are never taken for it."""
    ckpt = load_checkpoint(out / "last.pt")
    model_from_checkpoint(ckpt, out / "last.pt")
    epoch = ckpt["epoch"]
    assert 1 <= epoch <= EPOCHS and epoch >= previous_epoch, (epoch, previous_epoch)
    if (out / "best.pt").exists():
        load_checkpoint(out / "best.pt")
    for f in out.iterdir():
        if f.name.endswith(".tmp"):
            assert TEMP_NAME.match(f.name), f.name  # hidden, random infix: never "last.pt"
            if ".pt." in f.name:  # killed mid-write: refused; between fsync and rename: complete
                try:
                    load_checkpoint(f)
                except UserError as e:
                    assert str(f) in str(e) and "\n" not in str(e)
    return epoch


def _temps(out: Path) -> set[Path]:
    return set(out.glob(".last.pt.*.tmp"))


def test_sigkill_at_any_moment_leaves_a_loadable_checkpoint(fashion_dir, tmp_path):
    out, log = tmp_path / "run", tmp_path / "train.log"
    last = out / "last.pt"
    report = []

    # 1. a fresh run, in its second epoch: epoch 1 saved, then 3 steps of epoch 2
    _kill(_run_to("replaced,step:3", fashion_dir, out, log, resume=False))
    epoch = _check_after_kill(out, 1)
    assert epoch == 1
    report.append(("fresh run, epoch 2", epoch))

    # 2. a resumed run during start-up: it has read last.pt, and written nothing yet
    before = last.read_bytes()
    _kill(_run_to("loaded", fashion_dir, out, log, resume=True))
    assert last.read_bytes() == before  # nothing written yet
    epoch = _check_after_kill(out, epoch)
    report.append(("resume, start-up", epoch))

    # 3. a resumed run just after it replaced last.pt (the epoch's last checkpoint write)
    _kill(_run_to("replaced", fashion_dir, out, log, resume=True))
    epoch = _check_after_kill(out, epoch + 1)
    assert epoch == 2
    report.append(("resume, just after a save", epoch))

    # 4. a resumed run while it writes last.pt: half of the temp file written
    before, old_temps = last.read_bytes(), _temps(out)
    _kill(_run_to("writing", fashion_dir, out, log, resume=True))
    assert last.read_bytes() == before  # the old epoch 2, untouched
    epoch = _check_after_kill(out, epoch)
    [half] = _temps(out) - old_temps  # stays behind under its own name, refused
    with pytest.raises(UserError, match="not a readable checkpoint"):
        load_checkpoint(half)
    report.append(("resume, writing last.pt", epoch))

    # 5. a resumed run between the fsync of its complete temp file and the rename
    old_temps = _temps(out)
    _kill(_run_to("written", fashion_dir, out, log, resume=True))
    assert last.read_bytes() == before
    epoch = _check_after_kill(out, epoch)
    [complete] = _temps(out) - old_temps
    assert load_checkpoint(complete)["epoch"] == epoch + 1  # the next epoch's, complete
    report.append(("resume, before the rename", epoch))
    assert epoch < EPOCHS  # the last run below has work left

    # the last run resumes and completes
    proc = _start(fashion_dir, out, log, resume=True)
    assert proc.wait(timeout=gates.DEADLINE) == 0, log.read_text()[-2000:]  # a safety net only
    final = load_checkpoint(last)
    assert final["epoch"] == EPOCHS
    weights = load_checkpoint(out / "model.safetensors")
    assert RunConfig.from_dict(weights["config"]) == RunConfig.from_dict(final["config"])
    temps = sorted(f.name for f in out.iterdir() if f.name.endswith(".tmp"))
    print("\nkill points (where, last.pt epoch after the kill):", report, "leftover temp files:", temps)


def test_kill_during_atomic_write_keeps_the_old_file(fashion_run, tmp_path):
    """Kill point 4 on atomic_write alone: a writer SIGKILLed half-way through the temp
    file. last.pt keeps its old bytes; the half-written temp file stays behind under its
    own name and is refused as a checkpoint."""
    out = tmp_path / "run"
    out.mkdir()
    good = (fashion_run / "last.pt").read_bytes()
    (out / "last.pt").write_bytes(good)
    script = f"""
import sys
from pathlib import Path
from alexnet.core.checkpoint import atomic_write
data = Path({str(fashion_run / "last.pt")!r}).read_bytes()
def half(tmp):
    with open(tmp, "wb") as f:
        f.write(data[:len(data) // 2])
        f.flush()
        print("half written", flush=True)
        sys.stdin.readline()  # SIGKILLed here
        f.write(data[len(data) // 2:])
atomic_write(Path({str(out / "last.pt")!r}), half)
"""
    proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=_env())
    _STARTED.append(proc)
    gates.wait_for_gate(proc, b"half written\n")
    _kill(proc)
    assert (out / "last.pt").read_bytes() == good
    assert load_checkpoint(out / "last.pt")["epoch"] == torch.load(fashion_run / "last.pt", weights_only=True)["epoch"]
    [temp] = [f for f in out.iterdir() if f.name != "last.pt"]
    assert TEMP_NAME.match(temp.name) and temp.stat().st_size == len(good) // 2
    with pytest.raises(UserError, match="not a readable checkpoint"):
        load_checkpoint(temp)
