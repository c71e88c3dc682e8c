"""Training health checks (health.py) on synthetic and recorded loss sequences; no training."""

import json
import math

import pytest
import torch

from alexnet.run.health import (
    DEAD_GRADIENTS,
    EXPLODING,
    FLAT_MARGIN,
    FLAT_STEPS,
    NON_FINITE,
    NON_FINITE_VAL,
    NOT_LEARNING,
    HealthEvent,
    HealthMonitor,
)

LN10 = math.log(10)
WINDOW = 20  # the training loop's log_every

# 20-step window means of the first Fashion-MNIST epoch (468 steps), recorded by
# benchmarks/health.py: the default recipe (He init) learns, the paper's init and
# PyTorch's at lr 0.02 stay at ln 10 (see health.py's docstring)
HE = [
    3.2622,
    2.2594,
    2.0575,
    1.7121,
    1.4664,
    1.3472,
    1.2522,
    1.1773,
    1.1536,
    1.0885,
    1.0565,
    1.0841,
    1.0309,
    1.0421,
    1.0091,
    0.9803,
    0.9882,
    0.9741,
    0.9765,
    0.9514,
    0.9759,
    0.9451,
    0.9396,
]
PAPER = [
    2.3625,
    2.3633,
    2.3691,
    2.3603,
    2.3713,
    2.3502,
    2.3176,
    2.3133,
    2.3099,
    2.3101,
    2.3099,
    2.3065,
    2.3055,
    2.3058,
    2.3045,
    2.3046,
    2.3034,
    2.3056,
    2.3033,
    2.3042,
    2.3042,
    2.3048,
    2.3038,
]
TORCH_LR002 = [
    2.3024,
    2.303,
    2.3034,
    2.3035,
    2.3029,
    2.3023,
    2.3023,
    2.3023,
    2.3026,
    2.3028,
    2.3028,
    2.3031,
    2.3026,
    2.3024,
    2.3026,
    2.3023,
    2.3023,
    2.3023,
    2.3017,
    2.3019,
    2.3016,
    2.3011,
    2.3002,
]


def feed(monitor: HealthMonitor, means, first_step: int = WINDOW) -> list[HealthEvent]:
    """Windows ending at first_step, first_step + 20, ...; the events they returned."""
    events = []
    for i, m in enumerate(means):
        e = monitor.window(first_step + i * WINDOW, m)
        if e is not None:
            events.append(e)
    return events


def one_line(e: HealthEvent) -> bool:
    """One line that opens with where it happened: "step N:" (or "epoch N:" for validation)."""
    where = "epoch" if e.kind == NON_FINITE_VAL else "step"
    return "\n" not in e.message and e.message.startswith(f"{where} {e.step}:")


def test_a_flat_loss_warns_exactly_once_at_flat_steps():
    m = HealthMonitor(10, flat_steps=100)
    events = feed(m, [LN10 + 0.001 * (-1) ** i for i in range(40)])
    assert len(events) == 1 and m.events == events
    e = events[0]
    assert e.kind == NOT_LEARNING and not e.fatal and e.step == 100 and one_line(e)
    assert "ln 10" in e.message and "--init caffe" in e.message and "--warmup-epochs" in e.message
    assert "--lr" in e.message and "paper's init" in e.message and "later" in e.message


def test_the_first_window_at_or_after_flat_steps_decides():
    m = HealthMonitor(10, flat_steps=110)  # not a multiple of the window
    assert [e.step for e in feed(m, [LN10] * 10)] == [120]


def test_a_loss_above_chance_is_not_learning_either():
    m = HealthMonitor(10, flat_steps=40)
    assert [e.kind for e in feed(m, [4.0, 5.0, 4.5])] == [NOT_LEARNING]


def test_a_learning_loss_never_warns():
    m = HealthMonitor(10, flat_steps=100)
    assert feed(m, [LN10 - 0.05 * i for i in range(40)]) == [] and m.events == []


def test_once_learned_a_later_rise_to_chance_is_not_a_plateau():
    m = HealthMonitor(10, flat_steps=100)
    assert feed(m, [2.0, 1.5] + [LN10] * 20) == []


def test_the_measured_runs_with_the_default_thresholds():
    # the default recipe never warns; the flat runs warn once, within their first epoch
    assert feed(HealthMonitor(10), HE) == []
    for flat in (PAPER, TORCH_LR002):
        events = feed(HealthMonitor(10), flat)
        assert [(e.kind, e.step) for e in events] == [(NOT_LEARNING, FLAT_STEPS)]
        assert FLAT_STEPS < 468
    # margins: the learning run left by more than the margin within 3 windows; the
    # flat ones never came within 20x the margin's distance
    assert min(HE[:3]) < LN10 - FLAT_MARGIN
    assert min(PAPER + TORCH_LR002) > LN10 - FLAT_MARGIN / 20


def test_one_noisy_spike_does_not_stop():
    m = HealthMonitor(10)
    assert feed(m, [2.0, 1.5, 50.0, 1.4, 1.3, 80.0, 1.2]) == []


def test_a_sustained_explosion_stops_with_its_step():
    m = HealthMonitor(10)
    events = feed(m, [2.0, 1.5, 1.4, 30.0, 60.0, 90.0])
    # the caller stops at the first fatal event; one that goes on is told again
    assert [(e.kind, e.step, e.fatal) for e in events] == [(EXPLODING, 100, True), (EXPLODING, 120, True)]
    e = events[0]
    assert e.kind == EXPLODING and e.fatal and e.step == 100 and one_line(e)
    assert "23.03" in e.message and "2 windows" in e.message
    assert "--lr" in e.message and "--init caffe" in e.message and "--warmup-epochs" in e.message


def test_the_explosion_level_is_a_multiple_of_ln_c():
    m = HealthMonitor(1000, explode_factor=5.0, explode_windows=3)
    level = 5 * math.log(1000)
    assert feed(m, [level * 0.99] * 5) == []
    assert [e.step for e in feed(m, [level * 1.01] * 3, first_step=200)] == [240]


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_a_non_finite_loss_stops_at_once(bad):
    m = HealthMonitor(10)
    events = feed(m, [2.0, bad])
    assert len(events) == 1
    e = events[0]
    assert e.kind == NON_FINITE and e.fatal and e.step == 40 and one_line(e)
    assert "--lr" in e.message and "--init caffe" in e.message and "--warmup-epochs" in e.message


def test_a_non_finite_validation_loss_stops():
    m = HealthMonitor(10)
    assert m.validation(1, 0.6) is None
    e = m.validation(2, math.nan)
    assert e.kind == NON_FINITE_VAL and e.fatal and e.step == 2 and one_line(e) and "nan" in e.message
    assert m.events == [e]


def test_one_class_has_nothing_to_learn_but_nan_still_stops():
    m = HealthMonitor(1, flat_steps=0)
    assert feed(m, [0.0] * 5) == []
    assert feed(m, [math.nan])[0].kind == NON_FINITE


def test_bad_thresholds_are_refused():
    with pytest.raises(ValueError):
        HealthMonitor(0)
    with pytest.raises(ValueError):
        HealthMonitor(10, explode_windows=0)


class Net(torch.nn.Module):
    """conv -> ReLU -> linear -> ReLU -> linear: a ReLU net with conv and linear weights."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(1, 4, 3)
        self.fc1 = torch.nn.Linear(4 * 6 * 6, 16)
        self.fc2 = torch.nn.Linear(16, 3)

    def forward(self, x):
        x = torch.relu(self.conv(x)).flatten(1)
        return self.fc2(torch.relu(self.fc1(x)))


def backward(net: Net) -> None:
    torch.manual_seed(1)
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 3, (8,))
    net.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(net(x), y).backward()


def test_a_normal_backward_has_no_dead_gradients():
    net = Net()
    backward(net)
    assert HealthMonitor(3).gradients(20, net) is None


def test_dead_relus_are_reported_once_with_their_layers():
    net = Net()
    with torch.no_grad():  # every fc1 unit negative: its ReLU passes nothing back
        net.fc1.weight.zero_()
        net.fc1.bias.fill_(-1.0)
    backward(net)
    m = HealthMonitor(3)
    e = m.gradients(40, net)
    # fc2 sees only zeros and conv gets nothing through fc1's ReLU; fc1's own weight gradient
    # is zero too (the ReLU's derivative is 0 at every unit)
    assert e.kind == DEAD_GRADIENTS and not e.fatal and e.step == 40 and one_line(e)
    assert "conv, fc1, fc2" in e.message and "dead ReLUs" in e.message and "--init caffe" in e.message
    assert m.gradients(60, net) is None and m.events == [e]


def test_one_zeroed_layer_gradient_is_reported():
    net = Net()
    backward(net)
    net.fc1.weight.grad.zero_()
    e = HealthMonitor(3).gradients(20, net)
    assert e.kind == DEAD_GRADIENTS and "fc1" in e.message and "conv" not in e.message


def test_layers_without_gradients_are_not_judged():
    net = Net()
    backward(net)
    net.conv.weight.grad = None  # frozen or unused this step
    assert HealthMonitor(3).gradients(20, net) is None


def test_the_state_dict_round_trip_prevents_a_second_warning(tmp_path):
    m = HealthMonitor(10, flat_steps=100)
    first = feed(m, [LN10] * 6)
    assert [e.kind for e in first] == [NOT_LEARNING]
    net = Net()
    with torch.no_grad():
        net.fc2.weight.zero_()
    backward(net)
    net.fc1.weight.grad.zero_()
    assert m.gradients(120, net).kind == DEAD_GRADIENTS
    # through a checkpoint (weights_only, as checkpoint.py loads) and JSON
    torch.save({"health": m.state_dict()}, tmp_path / "last.pt")
    state = torch.load(tmp_path / "last.pt", weights_only=True)["health"]
    assert json.loads(json.dumps(state)) == state
    resumed = HealthMonitor(10, flat_steps=100)
    resumed.load_state_dict(state)
    assert feed(resumed, [LN10] * 6, first_step=140) == []
    assert resumed.gradients(260, net) is None
    assert resumed.events == m.events and [e.kind for e in resumed.events] == [NOT_LEARNING, DEAD_GRADIENTS]


def test_the_state_dict_carries_an_explosion_in_progress():
    m = HealthMonitor(10)
    feed(m, [2.0, 30.0])
    resumed = HealthMonitor(10)
    resumed.load_state_dict(m.state_dict())
    assert resumed.window(60, 30.0).kind == EXPLODING


def test_a_checkpoint_from_before_health_starts_afresh_without_false_alarms():
    m = HealthMonitor(10)
    m.load_state_dict({})
    # resumed at step 5000 of a healthy run: its current loss is judged, no plateau warning
    assert feed(m, [0.9, 0.85], first_step=5000) == [] and m.events == []


@pytest.mark.parametrize(("precision", "advice"), [("bf16", "--amp off"), ("fp16", "--amp bf16")])
def test_a_divergence_under_autocast_names_low_precision(precision, advice):
    for events in (
        feed(HealthMonitor(10, precision=precision), [2.0, math.nan]),
        feed(HealthMonitor(10, precision=precision), [2.0, 1.5, 30.0, 60.0]),
        [HealthMonitor(10, precision=precision).validation(1, math.inf)],
    ):
        e = events[0]
        assert e.fatal and one_line(e) and f"low precision ({precision}) may be the cause" in e.message
        assert advice in e.message and "--lr" in e.message


def test_an_fp32_divergence_does_not_blame_precision():
    e = feed(HealthMonitor(10, precision="off"), [2.0, math.nan])[0]
    assert e.fatal and "precision" not in e.message and "--amp" not in e.message
