import pytest
import torch
import torchvision
from torch import nn

from alexnet.core.model import ARCHITECTURES, build_model, count_parameters, summarize

# Golden numbers: docs/PAPER.md (paper, paper-ungrouped), torchvision (owt).
PARAMS = {"paper": 60_965_224, "paper-ungrouped": 62_378_344, "owt": 61_100_840}


@pytest.mark.parametrize("name,expected", PARAMS.items())
def test_parameter_counts(name, expected):
    assert count_parameters(build_model(name, num_classes=1000)) == expected


def test_owt_matches_torchvision_count():
    assert count_parameters(torchvision.models.alexnet()) == PARAMS["owt"]


def test_small_parameter_count_golden():
    # conv 1*36*25+36, 18*96*25+96, 96*144*9+144, 72*144*9+144, 72*96*9+96,
    # fc 384*768+768, 768*768+768, 768*10+10
    assert count_parameters(build_model("small")) == 1_218_514


def _shapes(model):
    return {r["name"]: tuple(r["output"]) for r in summarize(model)["layers"]}


def test_paper_layer_shapes_at_227():
    s = summarize(build_model("paper"))
    convs = [tuple(r["output"]) for r in s["layers"] if r["type"] == "Conv2d"]
    pools = [tuple(r["output"]) for r in s["layers"] if r["type"] == "MaxPool2d"]
    assert convs == [(96, 55, 55), (256, 27, 27), (384, 13, 13), (384, 13, 13), (256, 13, 13)]
    assert pools == [(96, 27, 27), (256, 13, 13), (256, 6, 6)]
    fcs = [tuple(r["output"]) for r in s["layers"] if r["type"] == "Linear"]
    assert fcs == [(4096,), (4096,), (1000,)]
    assert s["params"] == PARAMS["paper"]
    assert s["macs"] == 724_406_816  # docs/PAPER.md: about 724 M


def test_paper_structure_groups_lrn_dropout_order():
    m = build_model("paper")
    convs = [mod for mod in m.features if isinstance(mod, nn.Conv2d)]
    assert [c.groups for c in convs] == [1, 2, 1, 2, 2]
    kinds = [type(mod).__name__ for mod in m.features]
    # ReLU then LRN then pool after conv1 and conv2 (§3.3, §3.4)
    assert kinds[:8] == ["Conv2d", "ReLU", "LocalResponseNorm", "MaxPool2d"] * 2
    lrn = m.features[2]
    assert (lrn.size, lrn.k, lrn.alpha, lrn.beta) == (5, 2.0, 1e-4, 0.75)
    pool = m.features[3]
    assert (pool.kernel_size, pool.stride) == (3, 2)
    # dropout on the outputs of fc6 and fc7 (§4.2), not their inputs as in torchvision
    assert [type(mod).__name__ for mod in m.classifier] == [
        "Linear",
        "ReLU",
        "Dropout",
        "Linear",
        "ReLU",
        "Dropout",
        "Linear",
    ]
    assert all(d.p == 0.5 for d in m.classifier if isinstance(d, nn.Dropout))


def test_ungrouped_has_no_groups():
    m = build_model("paper-ungrouped")
    assert all(c.groups == 1 for c in m.features if isinstance(c, nn.Conv2d))


def test_options_change_the_network():
    m = build_model("paper", activation="tanh", lrn=False, pooling="nonoverlap", dropout=0.3)
    kinds = {type(mod).__name__ for mod in m.modules()}
    assert "Tanh" in kinds and "ReLU" not in kinds and "LocalResponseNorm" not in kinds
    assert all(p.kernel_size == 2 and p.stride == 2 for p in m.modules() if isinstance(p, nn.MaxPool2d))
    assert all(d.p == 0.3 for d in m.modules() if isinstance(d, nn.Dropout))
    # 2/2 pooling at 227 still ends at 6x6 (55 -> 27 -> 13 -> 6)
    assert count_parameters(m) == PARAMS["paper"]


def test_width_multiplier_and_channels():
    m = build_model("paper", width=0.5, in_channels=1, num_classes=10)
    convs = [c for c in m.features if isinstance(c, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [48, 128, 192, 192, 128]
    assert convs[0].in_channels == 1
    assert m.classifier[-1].out_features == 10
    assert m(torch.zeros(2, 1, 227, 227)).shape == (2, 10)


@pytest.mark.parametrize("width", [0.1, 0.25, 0.3, 1.7])
def test_any_width_builds(width):
    m = build_model("small", width=width)
    assert m(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize("size", [28, 32, 64])
def test_small_takes_28_to_64_pixels(size):
    m = build_model("small", input_size=size, in_channels=3, num_classes=7)
    assert m(torch.zeros(2, 3, size, size)).shape == (2, 7)


def test_too_small_input_is_an_error():
    with pytest.raises(ValueError, match="too small"):
        build_model("paper", input_size=32)


def test_bad_option_is_an_error():
    with pytest.raises(ValueError, match="activation"):
        build_model("paper", activation="sigmoid")
    with pytest.raises(ValueError, match="unknown model"):
        build_model("vgg")


def test_the_package_exports_the_model_on_first_use():
    """`import alexnet` imports no torch (test_cli.py); its torch names resolve when used."""
    import alexnet
    from alexnet.core import lrn, model

    assert alexnet.build_model is model.build_model and alexnet.AlexNet is model.AlexNet
    assert alexnet.LocalResponseNorm is lrn.LocalResponseNorm
    assert set(alexnet.__all__) <= set(dir(alexnet)) | set(alexnet._WITH_TORCH)
    with pytest.raises(AttributeError, match="no_such_name"):
        alexnet.no_such_name  # noqa: B018


def test_paper_init_statistics():
    torch.manual_seed(0)
    m = build_model("paper").requires_grad_(False)
    convs = [mod for mod in m.features if isinstance(mod, nn.Conv2d)]
    fcs = [mod for mod in m.classifier if isinstance(mod, nn.Linear)]
    for layer in convs + fcs:
        w = layer.weight
        assert abs(w.mean().item()) < 1e-3
        assert w.std().item() == pytest.approx(0.01, rel=0.05)
    layers = convs + fcs  # conv1..5, fc6..8: bias 1 in conv2, conv4, conv5, fc6, fc7 (§5)
    assert [float(mod.bias.unique().item()) for mod in layers] == [0, 1, 0, 1, 1, 1, 1, 0]


def test_caffe_init():
    m = build_model("paper", init="caffe").requires_grad_(False)
    fcs = [mod for mod in m.classifier if isinstance(mod, nn.Linear)]
    assert fcs[0].weight.std().item() == pytest.approx(0.005, rel=0.05)
    assert fcs[2].weight.std().item() == pytest.approx(0.01, rel=0.05)
    assert float(fcs[0].bias.unique()) == pytest.approx(0.1)


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_every_parameter_gets_a_gradient(name):
    torch.manual_seed(0)
    m = build_model(name, num_classes=5, init="kaiming")
    size = m.config.input_size
    x = torch.randn(2, m.config.in_channels, size, size)
    m(x).logsumexp(1).sum().backward()
    for pname, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname


def test_owt_is_torchvision_alexnet():
    torch.manual_seed(0)
    tv = torchvision.models.alexnet(weights=None).eval()
    ours = build_model("owt").eval()
    missing = ours.load_state_dict(tv.state_dict(), strict=True)
    assert not missing.missing_keys and not missing.unexpected_keys
    assert list(ours.state_dict()) == list(tv.state_dict())
    x = torch.randn(3, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), tv(x), rtol=0, atol=0)


def test_penultimate_is_fc7():
    m = build_model("small").eval()
    x = torch.randn(2, 1, 28, 28)
    assert m.penultimate(x).shape == (2, 768)
    torch.testing.assert_close(m.classifier[-1](m.penultimate(x)), m(x))
