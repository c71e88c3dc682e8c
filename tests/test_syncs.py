"""Under torchrun, a training epoch makes one all-reduce and one host sync a window of
log_every steps (the running totals, the gradient probe and the stop flag together), and
evaluation one for the whole pass: counted here with a pretend 2-process group whose
all-reduce is counted instead of run (each process would do the same)."""

import sys

import pytest
import torch
import torch.distributed as dist

from alexnet.config import DataConfig, TrainConfig
from alexnet.core.augment import Preprocess
from alexnet.core.engine import Span, Stepper, Watch, evaluate_loader, train_one_epoch
from alexnet.core.model import build_model
from alexnet.core.optim import make_optimizer
from alexnet.data.loaders import InMemoryLoader, ShardedBatches
from alexnet.run.distributed import Dist
from alexnet.run.health import HealthMonitor

TWO = Dist(rank=0, world=2)


@pytest.fixture
def counted(monkeypatch):
    """Counts of all-reduces, and of host reads of tensors (tolist, item, float, int, bool)
    made by the engine and the health monitor themselves."""
    calls = {"all_reduce": 0, "host": 0}
    monkeypatch.setattr(dist, "all_reduce", lambda t, op=None: calls.__setitem__("all_reduce", calls["all_reduce"] + 1))

    def counting(original):
        def read(self, *a, **k):
            caller = sys._getframe(1).f_code.co_filename
            if caller.endswith(("alexnet/core/engine.py", "alexnet/run/health.py")):
                calls["host"] += 1
            return original(self, *a, **k)

        return read

    for name in ("tolist", "item", "__float__", "__int__", "__bool__"):
        monkeypatch.setattr(torch.Tensor, name, counting(getattr(torch.Tensor, name)))
    return calls


def _setup(n: int = 160, batch: int = 8):
    torch.manual_seed(0)
    data = DataConfig(name="fashion-mnist", resize=28, mean=(72.9,), std=(90.0,), mean_image=False, lighting=0.0)
    images = torch.randint(0, 255, (n, 1, 28, 28), dtype=torch.uint8)
    labels = torch.randint(0, 10, (n,))
    model = build_model("small", num_classes=10, in_channels=1, width=0.25)
    cfg = TrainConfig(lr=0.01, amp="off")
    prep = Preprocess(data, 28, torch.device("cpu"))
    step = Stepper(
        model, make_optimizer(model, cfg), torch.amp.GradScaler("cpu", enabled=False), prep, torch.device("cpu")
    )
    loader = InMemoryLoader(images, labels, ShardedBatches(n, batch, TWO, shuffle=True))
    return step, loader, prep


def test_one_sync_per_window_of_training_steps(counted):
    step, loader, _ = _setup()  # 160 images, global batch 8: 20 steps of 4 images on this process
    stops = iter([False] * 100)
    watch = Watch(d=TWO, health=HealthMonitor(10), log_every=5, show=False, should_stop=lambda: next(stops))
    r = train_one_epoch(step, loader, Span(), watch)
    assert r["steps"] == 20 and not r["stopped"]
    # windows end at steps 5, 10 and 15, and the epoch's end (step 20): 4, not one a step
    assert counted == {"all_reduce": 4, "host": 4}


def test_a_stop_request_is_seen_at_the_next_window(counted):
    step, loader, _ = _setup()
    asked = {"n": 0}

    def should_stop():
        asked["n"] += 1
        return asked["n"] >= 2  # asked at each window: the second window (step 10) stops

    watch = Watch(d=TWO, health=HealthMonitor(10), log_every=5, show=False, should_stop=should_stop)
    r = train_one_epoch(step, loader, Span(), watch)
    assert r["stopped"] and r["steps"] == 10
    assert counted["all_reduce"] == counted["host"] == 3  # two windows and the end


def test_evaluation_syncs_once(counted):
    step, loader, prep = _setup()
    loader.batches.shuffle = False
    r = evaluate_loader(step.net, loader, prep, torch.device("cpu"), "off", d=TWO, show=False)
    assert r["images"] == 80  # this process's half (the pretend all-reduce adds nothing)
    assert counted == {"all_reduce": 1, "host": 1}
