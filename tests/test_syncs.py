"""Under torchrun, a training epoch makes one all-reduce and one host sync a window of
log_every steps (the running totals, the gradient probe and the stop flag together),
besides DDP's own gradient all-reduce in every backward; evaluation one for the whole
pass. Counted with a pretend 2-process group whose all-reduce is counted instead of run
(each process would do the same), and under a real 2-process gloo group with DDP."""

import json
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.parallel import DistributedDataParallel

from alexnet.config import DataConfig, TrainConfig
from alexnet.core.augment import Preprocess
from alexnet.core.engine import Classifier, Training, Watch, evaluate_loader, train_one_epoch, train_step
from alexnet.core.model import build_model
from alexnet.core.optim import make_optimizer
from alexnet.data.loaders import InMemoryLoader, ShardedBatches
from alexnet.run.distributed import Dist
from alexnet.run.health import HealthMonitor

TWO = Dist(rank=0, world=2)
CPU = torch.device("cpu")


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


def _setup(n: int = 160, batch: int = 8, d: Dist = TWO, wrap=lambda model: model):
    torch.manual_seed(0)
    data = DataConfig(name="fashion-mnist", resize=28, mean=(72.9,), std=(90.0,), mean_image=False, lighting=0.0)
    images = torch.randint(0, 255, (n, 1, 28, 28), dtype=torch.uint8)
    labels = torch.randint(0, 10, (n,))
    model = build_model("small", num_classes=10, in_channels=1, width=0.25)
    cfg = TrainConfig(lr=0.01, amp="off")
    prep = Preprocess(data, 28, CPU)
    t = Training(wrap(model), make_optimizer(model, cfg), torch.amp.GradScaler("cpu", enabled=False), prep, CPU)
    loader = InMemoryLoader(images, labels, ShardedBatches(n, batch, d, shuffle=True))
    return t, loader, prep


def test_one_sync_per_window_of_training_steps(counted):
    t, loader, _ = _setup()  # 160 images, global batch 8: 20 steps of 4 images on this process
    stops = iter([False] * 100)
    watch = Watch(d=TWO, health=HealthMonitor(10), log_every=5, show=False, should_stop=lambda: next(stops))
    r = train_one_epoch(t, loader, watch=watch)
    assert r.steps == 20 and not r.stopped and r.images == 80
    # windows end at steps 5, 10 and 15, and the epoch's end (step 20): 4, not one a step
    assert counted == {"all_reduce": 4, "host": 4}


def test_a_stop_request_is_seen_at_the_next_window(counted):
    t, loader, _ = _setup()
    asked = {"n": 0}

    def should_stop():
        asked["n"] += 1
        return asked["n"] >= 2  # asked at each window: the second window (step 10) stops

    watch = Watch(d=TWO, health=HealthMonitor(10), log_every=5, show=False, should_stop=should_stop)
    r = train_one_epoch(t, loader, watch=watch)
    assert r.stopped and r.steps == 10
    assert counted["all_reduce"] == counted["host"] == 3  # two windows and the end


def test_alone_a_stop_request_is_seen_at_once(counted):
    t, loader, _ = _setup(d=Dist())
    asked = {"n": 0}

    def should_stop():
        asked["n"] += 1
        return asked["n"] >= 3

    r = train_one_epoch(t, loader, watch=Watch(log_every=5, show=False, should_stop=should_stop))
    assert r.stopped and r.steps == 3
    assert counted == {"all_reduce": 0, "host": 1}  # the end's totals alone


def test_evaluation_syncs_once(counted):
    t, loader, prep = _setup()
    loader.batches.shuffle = False
    r = evaluate_loader(Classifier(t.net, prep, "off"), loader, d=TWO, show=False)
    assert r.images == 80  # this process's half (the pretend all-reduce adds nothing)
    assert counted == {"all_reduce": 1, "host": 1}


def test_the_loop_steps_as_train_step_does():
    """train_one_epoch's inline step and train_step (which the plan times) are one step."""
    t, loader, prep = _setup(n=8, d=Dist())
    other = build_model("small", num_classes=10, in_channels=1, width=0.25)
    other.load_state_dict(t.net.state_dict())
    optimizer = make_optimizer(other, TrainConfig(lr=0.01, amp="off"))
    train_one_epoch(t, loader, watch=Watch(show=False))
    loader.set_epoch(0)
    images, labels = next(iter(loader))
    torch.manual_seed(0)  # step_seed(0, 0, 0, 0)
    train_step(other, optimizer, torch.amp.GradScaler("cpu", enabled=False), prep(images, train=True), labels, "off")
    for (name, a), b in zip(t.net.state_dict().items(), other.state_dict().values()):
        assert torch.equal(a, b), name


def _ddp_worker(rank: int, store: str, out: str) -> None:
    """One process of a 2-process gloo group: 20 steps under DDP at log_every 5, counting
    every torch.distributed.all_reduce and, apart, the gradient buckets DDP reduces."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    d = Dist(rank, 2)
    buckets = {"n": 0}

    def counted_hook(state, bucket):  # DDP's own gradient all-reduce (it calls dist.all_reduce)
        buckets["n"] += 1
        return default_hooks.allreduce_hook(state, bucket)

    def wrap(model):
        ddp = DistributedDataParallel(model, broadcast_buffers=False)
        ddp.register_comm_hook(None, counted_hook)
        return ddp

    t, loader, _ = _setup(d=d, wrap=wrap)
    calls = {"n": 0}
    original = dist.all_reduce

    def counting(*args, **kwargs):
        calls["n"] += 1
        return original(*args, **kwargs)

    dist.all_reduce = counting
    try:
        r = train_one_epoch(t, loader, watch=Watch(d=d, health=HealthMonitor(10), log_every=5, show=False))
    finally:
        dist.all_reduce = original
    dist.destroy_process_group()
    with open(f"{out}.{rank}", "w") as f:
        json.dump({"all_reduce": calls["n"], "buckets": buckets["n"], "steps": r.steps, "images": r.images}, f)


@pytest.mark.slow
def test_under_ddp_one_all_reduce_a_window_besides_the_gradients(tmp_path):
    mp.spawn(_ddp_worker, args=(str(tmp_path / "store"), str(tmp_path / "counts")), nprocs=2)
    for rank in (0, 1):
        c = json.loads((tmp_path / f"counts.{rank}").read_text())
        assert c["steps"] == 20 and c["images"] == 160  # both processes' images, all-reduced
        assert c["buckets"] >= 20 and c["buckets"] % 20 == 0  # DDP's: every step, the same buckets
        assert c["all_reduce"] - c["buckets"] == 4  # ours: windows at steps 5, 10, 15 and the end
