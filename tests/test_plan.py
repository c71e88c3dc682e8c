"""Run-time decisions (plan.py): precision by measurement, budgets turned into epochs.

The measurements are mocked (no test depends on this machine's speed); the decisions and
the arithmetic are checked exactly, and a budgeted run is checked to be the run that
`--epochs N` gives, also when resumed.
"""

import dataclasses
import json
import os
import shutil
import time

import pytest
import torch

from alexnet.apps.cli import main
from alexnet.core.recipes import resolve
from alexnet.run import measurements, plan
from alexnet.run.errors import UserError
from alexnet.run.plan import (
    BudgetPlan,
    choose_precision,
    cuda_precision,
    parse_budget,
    plan_budget,
    time_steps,
    validations,
)
from alexnet.run.runtime import check_precision, stored_precision

CPU = torch.device("cpu")


def fixed(seconds: dict):
    """A measure() that reports these seconds per step and records what it was asked."""
    asked = []

    def measure(candidates):
        asked.append(list(candidates))
        return {c: seconds[c] for c in candidates}

    measure.asked = asked
    return measure


def test_cpu_without_native_bf16_picks_fp32():
    # the Xeon of issue 10: oneDNN emulates bf16, a training step 2.2x slower
    p = choose_precision("auto", CPU, fixed({"off": 0.080, "bf16": 0.176}))
    assert p.amp == "off" and "2.20x slower" in p.reason and p.ms_per_step == {"off": 80.0, "bf16": 176.0}


def test_cpu_with_amx_picks_bf16():
    p = choose_precision("auto", CPU, fixed({"off": 0.080, "bf16": 0.040}))
    assert p.amp == "bf16" and "2.00x faster" in p.reason


def test_a_marginal_bf16_gain_keeps_fp32():
    p = choose_precision("auto", CPU, fixed({"off": 0.080, "bf16": 0.078}))
    assert p.amp == "off" and "not worth" in p.reason


def test_an_explicit_precision_is_not_measured():
    measure = fixed({"off": 1.0, "bf16": 0.1})
    for amp in ("off", "bf16", "fp16"):
        assert choose_precision(amp, CPU, measure).amp == amp
    assert measure.asked == []


def test_cuda_capability_decides(monkeypatch):
    assert cuda_precision((8, 0)).amp == "bf16" and cuda_precision((9, 0)).amp == "bf16"
    for old in ((7, 0), (7, 5)):  # V100, T4: torch.cuda.is_bf16_supported() says True there (emulated)
        assert cuda_precision(old).amp == "fp16" and "loss scaler" in cuda_precision(old).reason
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # not asked any more
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: (7, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Tesla V100")
    measure = fixed({})
    p = choose_precision("auto", torch.device("cuda"), measure)
    assert p.amp == "fp16" and "Tesla V100" in p.reason and measure.asked == []


def test_a_card_with_native_bf16_still_times_it(monkeypatch):
    """On an H100 the small model's step may be bound by kernel launches: bf16 is taken
    only where it times faster, as on a CPU."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: (9, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "NVIDIA H100")
    cuda = torch.device("cuda")
    launch_bound = fixed({"off": 0.0030, "bf16": 0.0031})
    p = choose_precision("auto", cuda, launch_bound)
    assert p.amp == "off" and "NVIDIA H100" in p.reason and launch_bound.asked == [["off", "bf16"]]
    assert choose_precision("auto", cuda, fixed({"off": 0.030, "bf16": 0.012})).amp == "bf16"


def test_mps_stays_fp32():
    assert choose_precision("auto", torch.device("mps"), fixed({})).amp == "off"


def test_time_steps_alternates_and_takes_the_median():
    now = [0.0]
    calls = []

    def step(name, cost):
        def fn():
            calls.append(name)
            now[0] += cost

        return fn

    t = time_steps({"a": step("a", 0.5), "b": step("b", 0.25)}, clock=lambda: now[0])
    assert t == {"a": 0.5, "b": 0.25}
    warm = plan.WARMUP_STEPS
    assert calls[: 2 * warm] == ["a"] * warm + ["b"] * warm
    assert calls[2 * warm : 2 * warm + 4] == ["a", "b", "a", "b"]  # rounds alternate


@pytest.mark.parametrize(
    "text, seconds",
    [("300", 300), ("300s", 300), ("5m", 300), ("5 min", 300), ("1.5h", 5400), ("90s", 90), (".5m", 30)],
)
def test_parse_budget(text, seconds):
    assert parse_budget(text) == seconds


@pytest.mark.parametrize("text", ["", "five minutes", "-5m", "0", "5d", "m"])
def test_bad_budgets_are_one_line_errors(text):
    with pytest.raises(UserError, match="--budget"):
        parse_budget(text)


def test_budget_arithmetic():
    # 100 steps of 0.1 s = 10 s an epoch; one validation 5 s; 300 s less 4% less 10 s spent = 278 s:
    # 27 whole epochs (275 s), then 30 steps of a 28th (278 s)
    p = plan_budget(300, 10, 0.1, 100, 5, max_epochs=90, val_every=0, margin=0.04)
    assert (p.epochs, p.steps, p.validations) == (28, 2730, 1) and p.estimate_s == pytest.approx(288)
    assert "2730 steps (27 epochs of 100 and 30 steps)" in p.describe()
    capped = plan_budget(300, 10, 0.1, 100, 5, max_epochs=20, val_every=0, margin=0.04)  # the cap
    assert (capped.epochs, capped.steps) == (20, 2000)
    # 15 s an epoch with its validation: 18 epochs (270 s), the 19th's validation leaves 3 s: 30 steps
    p = plan_budget(300, 10, 0.1, 100, 5, max_epochs=90, val_every=1, margin=0.04)
    assert (p.epochs, p.steps, p.validations) == (19, 1830, 19)
    p = plan_budget(300, 10, 0.1, 100, 5, max_epochs=90, val_every=4, margin=0.04)  # 24 epochs: 240 + 6 x 5 = 270
    assert (p.epochs, p.steps, p.validations) == (25, 2430, 7)  # the 25th validates: 3 s = 30 steps
    exact = plan_budget(300, 10, 0.1, 100, 5, max_epochs=90, val_every=0, margin=(300 - 285) / 300)
    assert (exact.epochs, exact.steps) == (27, 2700)  # no step of a 28th fits
    assert [validations(e, 3) for e in (1, 3, 4, 6, 7)] == [1, 1, 2, 2, 3]
    slow = plan_budget(60, 5, 1.0, 100, 5, max_epochs=90, val_every=0, margin=0.04)
    assert slow.epochs == 1 and "not even one epoch" in slow.describe()


def test_epochs_win_over_the_recipe_budget():
    assert resolve("fashion-mnist", {}, {}, {}).train.budget == 300
    assert resolve("fashion-mnist", {}, {}, {"epochs": 3}).train.budget is None
    assert resolve("fashion-mnist", {}, {}, {"epochs": 3, "budget": 60}).train.budget is None
    assert resolve("fashion-mnist", {}, {}, {"budget": 60}).train.budget == 60
    with pytest.raises(UserError, match="plateau"):
        resolve("fashion-mnist", {}, {}, {"schedule": "plateau"})  # validates only at the end


# ----------------------------------------------------------------------------- a budgeted run

# 10 steps an epoch (640 images, batch 64) at a mocked 10 s a step: 100 s an epoch, so a
# 432 s budget (388.8 s usable after the 10% margin) holds 3 epochs and 8 steps of a fourth
# whatever the real loading time (under 8.8 s) was.
ARGS = ["--limit-train", "640", "--limit-val", "128", "--batch-size", "64", "--width", "0.25"]
STEP_SECONDS = {"off": 10.0, "bf16": 20.0, "eval": 0.01}


@pytest.fixture
def mocked_speed(monkeypatch, tmp_path):
    # no other test's measurements (the kernel's build stays in the session's cache)
    monkeypatch.setattr(measurements, "_path", lambda: tmp_path / "measurements.json")

    def fake(steps, **kwargs):
        return {name: STEP_SECONDS[name] for name in steps}

    monkeypatch.setattr(plan, "time_steps", fake)
    monkeypatch.setattr("alexnet.core.machine.time_steps", fake)
    # the real steps take milliseconds, not the mocked 10 s: the pace check would lengthen the
    # plan (test_a_run_behind_its_plan... tests the revisions)
    monkeypatch.setattr(plan, "revised_steps", lambda *args, **kwargs: None)


def _weights(out):
    return torch.load(out / "last.pt", weights_only=True)["model"]


@pytest.mark.slow
def test_a_budget_plans_the_run_that_epochs_n_repeats(mocked_speed, fashion_dir, tmp_path, capsys):
    budgeted = tmp_path / "budgeted"
    assert main(["train", "--data-dir", fashion_dir, *ARGS, "--budget", "432s", "--out", str(budgeted)]) == 0
    out = capsys.readouterr().out
    cfg = json.loads((budgeted / "config.json").read_text())
    train = cfg["train"]
    assert (train["epochs"], train["steps"], train["amp"], train["budget"]) == (4, 38, "off", 432)
    assert cfg["plan"]["precision"]["amp"] == "off" and "slower" in cfg["plan"]["precision"]["reason"]
    assert cfg["plan"]["budget"]["steps"] == 38 and cfg["plan"]["budget"]["step_s"] == 10.0
    assert "precision fp32 (bf16 measured 2.00x slower" in out
    assert "budget 7 min 12 s: 38 steps (3 epochs of 10 and 8 steps)" in out
    kernel = train["lrn_kernel"]
    assert kernel in ("fused", "torch") and cfg["plan"]["lrn"]["kernel"] == kernel
    assert f"--epochs 4 --steps 38 --amp off --lrn-kernel {kernel}" in out
    assert f"alexnet: LRN {'fused kernel' if kernel == 'fused' else 'torch operations'} (" in out
    rows = (budgeted / "metrics.csv").read_text().splitlines()
    assert len(rows) == 5 and rows[1].split(",")[5] == "" and rows[4].split(",")[5] != ""  # val at the end
    assert [r.split(",")[1] for r in rows[1:]] == ["10", "20", "30", "38"]  # the steps done
    # the schedule spans exactly the planned 38 steps: a warm-up, then a cosine to 0 at 38
    ckpt = torch.load(budgeted / "last.pt", weights_only=True)
    assert ckpt["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.0, abs=1e-12)

    repeat = tmp_path / "repeat"
    assert (
        main(
            [
                "train",
                "--data-dir",
                fashion_dir,
                *ARGS,
                "--epochs",
                "4",
                "--steps",
                "38",
                "--amp",
                "off",
                "--lrn-kernel",
                kernel,
                "--out",
                str(repeat),
            ]
        )
        == 0
    )
    a, b = _weights(budgeted), _weights(repeat)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_a_resumed_budgeted_run_keeps_its_plan(mocked_speed, fashion_dir, tmp_path, monkeypatch):
    whole, part = tmp_path / "whole", tmp_path / "part"
    assert main(["train", "--data-dir", fashion_dir, *ARGS, "--budget", "432s", "--out", str(whole)]) == 0
    # the same run, its epoch-1 checkpoint kept aside; then resumed on a "faster machine"
    import alexnet.core.rundir as rundir_module

    saved = rundir_module.save_checkpoint

    def keep_first(path, state):
        saved(path, state)
        if state.get("epoch") == 1 and path.name == "last.pt":
            shutil.copy(path, path.parent / "epoch1.pt")

    monkeypatch.setattr(rundir_module, "save_checkpoint", keep_first)
    assert main(["train", "--data-dir", fashion_dir, *ARGS, "--budget", "432s", "--out", str(part)]) == 0
    shutil.copy(part / "epoch1.pt", part / "last.pt")
    STEP_SECONDS_FAST = {"off": 1.0, "bf16": 0.1, "eval": 0.01}  # would plan bf16 and 30 epochs
    monkeypatch.setattr("alexnet.core.machine.time_steps", lambda steps, **k: {n: STEP_SECONDS_FAST[n] for n in steps})
    monkeypatch.setattr(plan, "time_steps", lambda steps, **k: {n: STEP_SECONDS_FAST[n] for n in steps})
    assert main(["train", "--data-dir", fashion_dir, *ARGS, "--budget", "432s", "--out", str(part), "--resume"]) == 0
    cfg = json.loads((part / "config.json").read_text())
    assert (cfg["train"]["epochs"], cfg["train"]["steps"], cfg["train"]["amp"]) == (4, 38, "off")
    a, b = _weights(whole), _weights(part)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_budget_plan_round_trips_through_config():
    p = plan_budget(300, 10, 0.1, 100, 5, max_epochs=90, val_every=0, margin=0.04)
    import dataclasses

    assert BudgetPlan(**dataclasses.asdict(p)) == p


def test_revised_steps_follow_the_pace():
    from alexnet.run.plan import revised_steps

    # 300 s budget, 3% kept: 291 s; 100 s gone, validation 11 s: 180 s left at 0.5 s a step
    assert revised_steps(300, 100, 400, 0.5, 1000, 11, most=5000) == 400 + 360  # behind: shortened
    assert revised_steps(300, 100, 400, 0.5, 740, 11, most=5000) is None  # within 5%: the plan stands
    assert revised_steps(300, 100, 400, 0.5, 765, 11, most=5000) is None  # 0.7% over: stands (3% kept)
    assert revised_steps(300, 100, 400, 0.5, 700, 11, most=5000) == 760  # ahead by more: lengthened
    assert revised_steps(300, 100, 400, 0.5, 600, 11, most=720) == 720  # never past the cap
    assert revised_steps(300, 320, 400, 0.5, 1000, 11, most=5000) == 400  # past the budget: stop now


@pytest.mark.slow
@pytest.mark.parametrize(
    "revised, rows, word", [(25, ["10", "20", "25"], "behind"), (45, ["10", "20", "30", "40", "45"], "ahead of")]
)
def test_a_run_off_its_pace_is_replanned_and_still_anneals(
    revised, rows, word, mocked_speed, fashion_dir, tmp_path, monkeypatch, capsys
):
    calls = []

    def pace(*args, **kwargs):  # the first check (after epoch 1) finds another pace
        calls.append(args)
        return revised if len(calls) == 1 else None

    monkeypatch.setattr(plan, "revised_steps", pace)
    out = tmp_path / "replanned"
    assert main(["train", "--data-dir", fashion_dir, *ARGS, "--budget", "432s", "--out", str(out)]) == 0
    log = capsys.readouterr().out
    assert f"alexnet: {word} the plan" in log and f"{revised} steps instead of 38" in log
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["train"]["steps"], cfg["train"]["epochs"]) == (revised, len(rows))
    assert cfg["plan"]["revised"]["steps"] == revised and cfg["plan"]["revised"]["at_step"] == 10
    lines = (out / "metrics.csv").read_text().splitlines()[1:]
    assert [r.split(",")[1] for r in lines] == rows and lines[-1].split(",")[5] != ""  # validated last
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert ckpt["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.0, abs=1e-12)  # annealed
    assert json.loads((out / "summary.json").read_text())["epochs_done"] == len(rows)


def test_fp16_runs_on_cuda_only():
    check_precision("fp16", torch.device("cuda"))
    for amp in ("off", "bf16", "auto"):
        check_precision(amp, CPU)
    for dev in (CPU, torch.device("mps")):
        with pytest.raises(UserError, match=f"CUDA only, not on {dev.type}.*--amp bf16, --amp off"):
            check_precision("fp16", dev)
    # a checkpoint's fp16 runs as fp32 elsewhere; "auto" (saved before a decision) as fp32
    assert [stored_precision(a, CPU) for a in ("fp16", "bf16", "off", "auto")] == ["off", "bf16", "off", "off"]
    assert stored_precision("fp16", torch.device("cuda")) == "fp16"


def test_fp16_on_the_cpu_is_refused_in_one_line_and_nothing_is_written(cli, fashion_dir, tmp_path, one_line_error):
    out = tmp_path / "run"
    rc, _, err = cli("train", "--data-dir", fashion_dir, "--device", "cpu", "--amp", "fp16", "--out", out)
    one_line_error(rc, err, "--amp fp16", "CUDA only", "--amp bf16")
    assert not out.exists()


def test_an_fp16_resume_of_a_bf16_run_starts_a_fresh_scale():
    """The checkpoint of a bf16 (or fp32) run holds its disabled scaler's empty state."""
    from alexnet.run.runtime import grad_scaler, restore_scaler

    saved = grad_scaler(CPU, "bf16").state_dict()
    assert saved == {}
    scaler = torch.amp.GradScaler("cpu", enabled=True)  # an fp16 run (on CUDA; the CPU scaler behaves alike)
    with pytest.raises(RuntimeError):
        scaler.load_state_dict(saved)  # what train did before
    restore_scaler(scaler, saved)
    assert scaler.get_scale() == torch.amp.GradScaler("cpu").get_scale()  # a fresh scale
    fp16 = torch.amp.GradScaler("cpu", enabled=True, init_scale=1024.0)
    restore_scaler(scaler, fp16.state_dict())
    assert scaler.get_scale() == 1024.0  # an fp16 run's own state is continued


def test_cuda_math_settings_and_the_paper_recipes_true_fp32(monkeypatch):
    from alexnet.run.runtime import configure_cuda

    saved = (
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.deterministic,
        torch.are_deterministic_algorithms_enabled(),
    )
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    try:
        line = configure_cuda(tf32=False, deterministic=True)
        assert line == "CUDA: TF32 off, cudnn.benchmark off, deterministic on"
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        assert torch.are_deterministic_algorithms_enabled() and os.environ["CUBLAS_WORKSPACE_CONFIG"]
        assert configure_cuda(tf32=True, deterministic=False) == "CUDA: TF32 on, cudnn.benchmark on, deterministic off"
        assert torch.backends.cudnn.benchmark and torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[:2]
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[2:4]
        torch.use_deterministic_algorithms(saved[4])
    assert resolve("/my/photos", {}, {}, {}, recipe="paper").train.tf32 is False  # §5's fp32 is fp32
    assert resolve("/my/photos", {}, {}, {}).train.tf32 is True


def test_a_fixed_gpu_under_torchrun_is_refused(monkeypatch):
    from alexnet.run import distributed

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(UserError, match="--device cuda:1: under torchrun each process takes"):
        distributed.init("cuda:1")


class _SlowLoader:
    """A loader whose worker processes deliver a batch every `seconds` once started, after
    a fast prefetched start (what a DataLoader's first batches look like)."""

    unreadable: list = []

    def __init__(self, workers: int, seconds: float, batches: int = 20):
        self.workers, self.seconds, self.batches = workers, seconds, batches

    def set_epoch(self, epoch, start=0):
        pass

    def __len__(self):
        return self.batches

    def __iter__(self):
        for i in range(self.batches):
            if i > 2 * self.workers:
                time.sleep(self.seconds)
            yield torch.zeros(1), torch.zeros(1)


def test_the_plan_times_a_loader_that_works_in_processes():
    from alexnet.core.machine import loader_seconds as _loader_seconds

    assert _loader_seconds(_SlowLoader(workers=0, seconds=0.05)) is None  # in memory: part of the step
    s = _loader_seconds(_SlowLoader(workers=2, seconds=0.05))
    assert 0.05 <= s < 0.5  # its steady state, not its prefetched start
    assert _loader_seconds(_SlowLoader(workers=2, seconds=0.05, batches=5)) is None  # too short to tell


def test_an_old_dict_plan_reads_as_a_plan_and_round_trips():
    from alexnet.config import TrainConfig

    t = TrainConfig(amp="off", epochs=4, steps=38, lrn_kernel="torch", budget=432)
    budget = dataclasses.asdict(plan_budget(432, 5, 10.0, 10, 0.1, max_epochs=30, val_every=0))
    old = {
        "precision": {"amp": "off", "reason": "bf16 measured 2.00x slower", "ms_per_step": {"off": 10000.0}},
        "epochs": 4,
        "steps": 38,
        "budget": budget,
        "lrn": {"kernel": "torch", "reason": "as asked"},
        "revised": {"steps": 38, "planned_steps": 40, "at_step": 10, "step_s": 10.0},
    }
    p = plan.Plan.from_dict(old, t)
    assert p.precision.amp == "off" and p.budget.steps == budget["steps"] and p.revised.planned_steps == 40
    assert p.to_dict() == old and plan.Plan.from_dict(p.to_dict(), t) == p
    bare = plan.Plan.from_dict({}, t)  # a checkpoint from before plans: its options
    assert (bare.precision.amp, bare.epochs, bare.steps, bare.lrn.kernel, bare.budget) == ("off", 4, 38, "torch", None)
    assert bare.apply(TrainConfig()) == dataclasses.replace(
        TrainConfig(), amp="off", epochs=4, steps=38, lrn_kernel="torch"
    )


def test_the_measurements_are_cached_by_what_they_depend_on(tmp_path, monkeypatch):
    monkeypatch.setattr(measurements, "_path", lambda: tmp_path / "measurements.json")
    calls = []

    def measure():
        calls.append(1)
        return {"off": 0.5}

    k = measurements.key(device="cpu: X", model={"name": "small"}, batch=64)
    assert measurements.measured("step_seconds", k, measure) == ({"off": 0.5}, "")
    value, when = measurements.measured("step_seconds", k, measure)
    assert value == {"off": 0.5} and when and len(calls) == 1  # the second run: from the cache
    other = measurements.key(device="cpu: X", model={"name": "small"}, batch=128)
    assert measurements.measured("step_seconds", other, measure)[1] == "" and len(calls) == 2
    assert measurements.measured("step_seconds", k, measure, remeasure=True)[1] == "" and len(calls) == 3
    json.loads((tmp_path / "measurements.json").read_text())  # strict JSON
    (tmp_path / "measurements.json").write_text("{not json")
    assert measurements.measured("step_seconds", k, measure)[1] == "" and len(calls) == 4  # ignored, rewritten
    assert measurements.recall("step_seconds", k) is not None


@pytest.mark.slow
def test_a_second_run_on_the_machine_reads_its_measurements(mocked_speed, fashion_dir, tmp_path, monkeypatch, capsys):
    timed = []

    def fake(steps, **kwargs):
        timed.extend(steps)
        return {name: STEP_SECONDS[name] for name in steps}

    monkeypatch.setattr(plan, "time_steps", fake)
    monkeypatch.setattr("alexnet.core.machine.time_steps", fake)
    args = ["train", "--data-dir", fashion_dir, *ARGS, "--budget", "432s"]
    assert main([*args, "--out", str(tmp_path / "first")]) == 0
    first = capsys.readouterr().out
    assert timed and "cached" not in first
    timed.clear()
    assert main([*args, "--out", str(tmp_path / "second")]) == 0
    second = capsys.readouterr().out
    assert timed == []  # nothing timed: the first run's numbers
    assert "; measured " in second and ", cached; --remeasure to measure again)" in second
    a, b = (json.loads((tmp_path / n / "config.json").read_text())["plan"] for n in ("first", "second"))
    assert (a["budget"]["step_s"], a["budget"]["validation_s"]) == (b["budget"]["step_s"], b["budget"]["validation_s"])
    assert b["measured"] and "measured" not in a
    assert main([*args, "--remeasure", "--out", str(tmp_path / "third")]) == 0
    assert timed and "cached" not in capsys.readouterr().out.split("alexnet: LRN")[0]
