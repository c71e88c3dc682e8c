"""A torchrun job restarts itself after a worker dies, and ends with the weights of the same
job uninterrupted, bit for bit.

`torchrun --standalone --nproc-per-node 2 --max-restarts 2 ... train ... --resume auto` on
the CPU (gloo), a tiny model on a slice of Fashion-MNIST, dropout and augmentation on (every
step reseeds from (seed, epoch, step, rank), engine.step_seed). Rank 0, the process that
writes the checkpoints, is SIGKILLed at points it reaches itself (tests/gates.py: it pauses
there and prints its pid, so nothing depends on timing), each time torchrun stops the other
worker and starts both again, and `--resume auto` continues from OUT/last.pt:

  1. the first start, just after it replaced last.pt with epoch 1's checkpoint: the first
     restart continues with epoch 2;
  2. the first restart, while it writes epoch 2's last.pt (half of the temp file written):
     last.pt is still epoch 1's, and the second restart does epoch 2 again;
  3. the second restart (a third pid) pauses after it saved epoch 2 and is let go on.

The job must exit 0 with model.safetensors, last.pt's weights and optimiser state, and
best.pt's weights equal to the uninterrupted job's, and metrics.csv with one row per epoch.
"""

import csv
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import gates
from alexnet.core.checkpoint import load_checkpoint
from alexnet.run.distributed import restart_hazard
from tiny import tiny_train_argv

EPOCHS = 3


def _env():
    # one math thread each: two processes share the cores. torchrun's rendezvous store shared
    # with the workers (torch >= 2.5) lets a restarted worker read its predecessor's address
    # and fail to connect: docs/SCALING.md, distributed.restart_hazard
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}


def _torchrun(entry: list) -> list:
    run = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    return [*run, "--max-restarts", "2", *entry]


def _train_argv(fashion_dir, out: Path) -> list:
    # --lrn-kernel auto would be decided by timing each job's first start (a restart keeps its
    # checkpoint's): on a busy machine the two jobs could choose differently, and round differently
    extra = ["--epochs", EPOCHS, "--batch-size", 64, "--val-every", 1, "--workers", 0, "--lrn-kernel", "torch"]
    return [*tiny_train_argv(fashion_dir, 256, 64, *extra), "--out", out, "--resume", "auto"]


def test_restarts_with_a_shared_rendezvous_store_are_warned_about():
    """torchrun tells its workers both (torch 2.14: TORCHELASTIC_USE_AGENT_STORE is "False"
    under TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1, TORCHELASTIC_MAX_RESTARTS is --max-restarts)."""
    for shared in ("True", "False", None):
        for restarts in ("0", "2", None):
            env = {
                k: v
                for k, v in (("TORCHELASTIC_USE_AGENT_STORE", shared), ("TORCHELASTIC_MAX_RESTARTS", restarts))
                if v
            }
            warning = restart_hazard(env)
            assert (warning is not None) == (shared == "True" and restarts == "2"), env
            assert warning is None or "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1" in warning


@pytest.fixture(scope="module")
def straight(tmp_path_factory, fashion_dir) -> Path:
    """The job uninterrupted."""
    out = tmp_path_factory.mktemp("straight") / "run"
    argv = _torchrun(["-m", "alexnet", *map(str, _train_argv(fashion_dir, out))])
    r = subprocess.run(argv, capture_output=True, text=True, timeout=gates.DEADLINE, env=_env())
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def _restarted_job(fashion_dir, out: Path, log: Path) -> tuple[dict, str]:
    """The job, with rank 0 SIGKILLed twice: just after it saved epoch 1's checkpoint, then
    (the first restart) while it writes epoch 2's. The second restart pauses after it saved
    epoch 2's checkpoint and is let go on. Returns (last.pt as the kills left it, the job's
    stdout)."""
    gate = "replaced/writing/replaced"  # the gates of the first start and of each restart
    argv = _torchrun([str(Path(gates.__file__).resolve()), gate, *map(str, _train_argv(fashion_dir, out))])
    with open(log, "wb") as err:
        job = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, env=_env())
    try:
        printed = gates.wait_for_gate(job)  # the first start, epoch 1 saved
        assert load_checkpoint(out / "last.pt")["epoch"] == 1
        assert load_checkpoint(out / "best.pt")["epoch"] == 1  # written before last.pt (the first validation)
        first = gates.gate_pid(printed)
        os.kill(first, signal.SIGKILL)

        printed += gates.wait_for_gate(job)  # the first restart, half of epoch 2's last.pt written
        second = gates.gate_pid(printed)
        left = load_checkpoint(out / "last.pt")
        assert left["epoch"] == 1 and len(list(out.glob(".last.pt.*.tmp"))) == 1
        os.kill(second, signal.SIGKILL)

        printed += gates.wait_for_gate(job)  # the second restart, epoch 2 saved again
        assert len({first, second, gates.gate_pid(printed)}) == 3
        gates.release(job)
        rest, _ = job.communicate(timeout=gates.DEADLINE)
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()
    assert job.returncode == 0, log.read_text()[-3000:]
    return left, printed + rest.decode()


@pytest.mark.slow  # torchrun jobs of two processes, one of them SIGKILLed twice
def test_a_restarted_job_ends_with_the_weights_of_an_uninterrupted_one(straight, fashion_dir, tmp_path):
    out = tmp_path / "run"
    left, printed = _restarted_job(fashion_dir, out, tmp_path / "torchrun.log")
    # both restarts continued from epoch 1's checkpoint: the second kill's half-written
    # epoch 2 was not taken for a checkpoint (nor left behind)
    assert printed.count("--resume auto: continuing from") == 2
    assert printed.count(f"resuming {out / 'last.pt'} at epoch 2, batch 1") == 2
    assert not list(out.glob(".*.tmp"))

    final, expected = load_file(out / "model.safetensors"), load_file(straight / "model.safetensors")
    assert list(final) == list(expected)
    for name in expected:
        assert torch.equal(final[name], expected[name]), name
    last, last_expected = load_checkpoint(out / "last.pt"), load_checkpoint(straight / "last.pt")
    assert last["epoch"] == last_expected["epoch"] == EPOCHS
    for name in last_expected["model"]:
        assert torch.equal(last["model"][name], last_expected["model"][name]), name
    momenta = [s["momentum_buffer"] for s in last["optimizer"]["state"].values()]
    expected_momenta = [s["momentum_buffer"] for s in last_expected["optimizer"]["state"].values()]
    assert len(momenta) == len(expected_momenta) > 0
    assert all(torch.equal(a, b) for a, b in zip(momenta, expected_momenta))
    best, best_expected = load_checkpoint(out / "best.pt"), load_checkpoint(straight / "best.pt")
    assert best["epoch"] == best_expected["epoch"]
    assert all(torch.equal(best["model"][k], best_expected["model"][k]) for k in best_expected["model"])
    # the restarts trained on from epoch 1's checkpoint: these are not its weights
    assert not any(torch.equal(last["model"][k], left["model"][k]) for k in last["model"] if "weight" in k)
    with open(out / "metrics.csv", newline="") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == list(range(1, EPOCHS + 1))


@pytest.mark.slow  # a torchrun job
def test_processes_that_do_not_all_see_the_checkpoint_are_refused(straight, fashion_dir, tmp_path):
    """On several nodes with a node-local --out, rank 0 would resume and the others start
    anew (their replicas would drift apart: other momenta, epochs, learning rates). Here rank
    1 is given another --out, as if its node did not see rank 0's: every process refuses to
    start, and the checkpoint is left as it was."""
    out = tmp_path / "run"
    shutil.copytree(straight, out)
    before = (out / "last.pt").read_bytes()
    script = tmp_path / "elsewhere.py"
    script.write_text(
        "import os, sys\n"
        "from alexnet.apps.cli import main\n"
        "argv = sys.argv[1:]\n"
        "if os.environ['RANK'] == '1':\n"
        "    argv[argv.index('--out') + 1] += '-elsewhere'\n"
        "sys.exit(main(argv))\n"
    )
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", script]
    argv += _train_argv(fashion_dir, out)
    r = subprocess.run(list(map(str, argv)), capture_output=True, text=True, timeout=gates.DEADLINE, env=_env())
    assert r.returncode != 0
    refusal = "alexnet: error: --resume auto: the processes of this job did not start from the same checkpoint"
    assert refusal in r.stdout + r.stderr, r.stderr[-3000:]
    assert (out / "last.pt").read_bytes() == before
