"""import-torchvision and export: the imported model computes what torchvision's does, and
the ONNX file computes what the PyTorch model does."""

import json
import os

import pytest
import torch
import torchvision
from PIL import Image
from torchvision import transforms as T

from alexnet.apps.cli import main
from alexnet.config import DataConfig, RunConfig
from alexnet.core.checkpoint import load_model, save_checkpoint
from alexnet.core.model import build_model

TORCHVISION_EVAL = T.Compose(
    [T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))]
)
# alexnet resizes uint8 tensors, torchvision's pipeline PIL images: a few pixels of a
# non-square photo (0.4% of coffee.png's) land one level apart, which moves the
# probabilities of the sharpened random model below by up to ~2e-4.
PIXEL_ROUNDING = 1e-3


def _torchvision_model(seed: int, num_classes: int = 1000) -> torch.nn.Module:
    """Random torchvision AlexNet whose fc8 is scaled up, so that its top class on a photo
    wins by a clear margin (default init gives a near-uniform softmax)."""
    torch.manual_seed(seed)
    model = torchvision.models.alexnet(weights=None, num_classes=num_classes).eval()
    with torch.no_grad():
        model.classifier[6].weight.mul_(1000)
        model.classifier[6].bias.mul_(1000)
    return model


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """(torchvision model, imported checkpoint path), imported through the CLI."""
    tmp = tmp_path_factory.mktemp("tv")
    model = _torchvision_model(0)
    torch.save(model.state_dict(), tmp / "alexnet-owt.pth")  # torchvision's file format
    assert main(["import-torchvision", str(tmp / "alexnet-owt.pth"), str(tmp / "owt.pt")]) == 0
    return model, tmp / "owt.pt"


@pytest.mark.slow
def test_imported_logits_equal_torchvision(imported):
    tv, ckpt = imported
    model, cfg, classes = load_model(ckpt, torch.device("cpu"))
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected = tv(x)
        # the run's memory format (channels_last): other summation orders, fp32's rounding
        in_run_format = (model(x) - expected).abs().max().item()
        diff = (model.to(memory_format=torch.contiguous_format)(x) - expected).abs().max().item()
    assert diff <= 1e-5, diff
    assert in_run_format <= 1e-5 * expected.abs().max().item(), in_run_format
    assert cfg.model.name == "owt" and cfg.model.num_classes == 1000 and cfg.train.amp == "off"
    assert classes == torchvision.models.AlexNet_Weights.IMAGENET1K_V1.meta["categories"]
    assert cfg.data.mean == pytest.approx((123.675, 116.28, 103.53))
    assert cfg.data.std == pytest.approx((58.395, 57.12, 57.375))


@pytest.mark.slow
def test_predict_matches_torchvision_preprocessing(imported, photos, cli):
    tv, ckpt = imported
    files = [photos[n] for n in ("astronaut.jpg", "coffee.png", "chelsea_rgba.png")]
    rc, out, err = cli("predict", ckpt, *files, "--topk", "5", "--device", "cpu", "--json")
    assert rc == 0, err
    for f, r in zip(files, json.loads(out)):
        with torch.no_grad():
            probs = tv(TORCHVISION_EVAL(Image.open(f).convert("RGB"))[None]).softmax(1)[0]
        top = probs.topk(5)
        assert [p["index"] for p in r["predictions"]] == top.indices.tolist(), f
        ours = torch.tensor([p["probability"] for p in r["predictions"]])
        assert (ours - top.values).abs().max() < PIXEL_ROUNDING, f


@pytest.mark.slow
def test_evaluate_on_a_folder_matches_torchvision(photos, tmp_path, cli):
    """A 4-class import evaluated on a folder gets torchvision's accuracy and loss."""
    tv = _torchvision_model(1, num_classes=4)
    torch.save(tv.state_dict(), tmp_path / "tv4.pth")
    names = ["ant", "bee", "cat", "dog"]
    (tmp_path / "classes.txt").write_text("\n".join(names) + "\n")
    rc, _, err = cli(
        "import-torchvision", tmp_path / "tv4.pth", tmp_path / "tv4.pt", "--classes", tmp_path / "classes.txt"
    )
    assert rc == 0, err
    labelled = []
    for i, (name, f) in enumerate(sorted(photos.items())):
        label = i % len(names)
        (tmp_path / "data" / "val" / names[label]).mkdir(parents=True, exist_ok=True)
        Image.open(f).convert("RGB").save(tmp_path / "data" / "val" / names[label] / f"{name}.png")
        labelled.append((Image.open(f).convert("RGB"), label))
    with torch.no_grad():
        logits = tv(torch.stack([TORCHVISION_EVAL(img) for img, _ in labelled]))
    labels = torch.tensor([label for _, label in labelled])
    rc, out, err = cli("evaluate", tmp_path / "tv4.pt", "--data", tmp_path / "data", "--device", "cpu", "--json")
    assert rc == 0, err
    r = json.loads(out)
    assert r["images"] == len(labelled)
    assert r["top1"] == pytest.approx((logits.argmax(1) == labels).float().mean().item())
    assert r["loss"] == pytest.approx(torch.nn.functional.cross_entropy(logits, labels).item(), abs=PIXEL_ROUNDING)


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.slow
def test_import_bad_input(cli, tmp_path, one_line_error):
    garbage = tmp_path / "garbage.pth"
    garbage.write_text("hello, these are not weights")
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    torch.save({"features.0.weight": _Exploit(marker)}, evil, pickle_protocol=2)
    a_list = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], a_list)
    paper = tmp_path / "paper.pth"  # AlexNet, but the paper's layer widths
    torch.save(build_model("paper", num_classes=10).state_dict(), paper)
    resnet_like = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, resnet_like)
    out = tmp_path / "out.pt"
    for bad, needle in (
        (tmp_path / "missing.pth", "no such file"),
        (tmp_path, "not a file"),
        (garbage, "not readable"),
        (evil, "not readable"),
        (a_list, "not a state dict"),
        (paper, "do not fit"),
        (resnet_like, "classifier.6.weight"),
    ):
        rc, _, err = cli("import-torchvision", bad, out)
        one_line_error(rc, err, str(bad), needle)
    assert not out.exists() and not marker.exists()

    good = tmp_path / "tv.pth"
    torch.save(torchvision.models.alexnet(weights=None, num_classes=3).state_dict(), good)
    names = tmp_path / "names.txt"
    names.write_text("a\nb\n")
    rc, _, err = cli("import-torchvision", good, out, "--classes", names)
    one_line_error(rc, err, str(names), "2 class names", "3 classes")
    rc, _, _ = cli("import-torchvision", good, out)
    assert rc == 0 and load_model(out, torch.device("cpu"))[2] == ["class_0", "class_1", "class_2"]
    rc, _, err = cli("import-torchvision", out, tmp_path / "again.pt")
    one_line_error(rc, err, str(out), "already an alexnet checkpoint")


# ------------------------------------------------------------------------ ONNX export

ONNX_MODELS = {"paper": {"num_classes": 10}, "small": {}, "owt": {"num_classes": 10}}


def _checkpoint(path, name: str, **options):
    """A randomly initialised model saved as a checkpoint, with made-up mean/std and classes."""
    torch.manual_seed(0)
    model = build_model(name, **options)
    c = model.config
    data = DataConfig(mean=(120.0,) * c.in_channels, std=(60.0,) * c.in_channels)
    classes = [f"c{i}" for i in range(c.num_classes)]
    save_checkpoint(
        path,
        {
            "config": RunConfig(model=c, data=data).to_dict(),
            "classes": classes,
            "model": model.state_dict(),
            "epoch": 0,
        },
    )
    return path


@pytest.fixture(scope="module", params=list(ONNX_MODELS))
def exported(request, tmp_path_factory):
    """(checkpoint, onnx file) per variant, exported through the CLI with a batch of 2."""
    tmp = tmp_path_factory.mktemp(f"onnx-{request.param}")
    ckpt = _checkpoint(tmp / "model.pt", request.param, **ONNX_MODELS[request.param])
    assert main(["export", str(ckpt), "--onnx", str(tmp / "model.onnx"), "--batch-size", "2"]) == 0
    return ckpt, tmp / "model.onnx"


def _pixels_preprocessed(cfg, batch: int) -> torch.Tensor:
    """Random 0..255 pixels normalised with the checkpoint's mean/std: realistic input scale."""
    m, d = cfg.model, cfg.data
    g = torch.Generator().manual_seed(1)
    x = torch.rand(batch, m.in_channels, m.input_size, m.input_size, generator=g) * 255
    return (x - torch.tensor(d.mean).view(1, -1, 1, 1)) / torch.tensor(d.std).view(1, -1, 1, 1)


@pytest.mark.slow
def test_onnx_matches_pytorch_for_batches_1_and_3(exported):
    import onnxruntime as ort

    ckpt, onnx_path = exported
    model, cfg, _ = load_model(ckpt, torch.device("cpu"))
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    for batch in (1, 3):  # exported with a batch of 2: the batch axis is dynamic
        x = _pixels_preprocessed(cfg, batch)
        with torch.no_grad():
            expected = model(x)
        (got,) = session.run(None, {"input": x.numpy()})
        assert got.shape == (batch, cfg.model.num_classes)
        diff = (torch.from_numpy(got) - expected).abs().max().item()
        scale = expected.abs().max().item()  # owt's default init gives logits of ~0.02 here
        assert diff < 1e-4 and diff < 1e-3 * scale, (cfg.model.name, batch, diff, scale)


@pytest.mark.slow
def test_onnx_metadata(exported):
    import onnx

    ckpt, onnx_path = exported
    _, cfg, classes = load_model(ckpt, torch.device("cpu"))
    meta = {p.key: p.value for p in onnx.load(str(onnx_path), load_external_data=False).metadata_props}
    assert json.loads(meta["classes"]) == classes
    assert json.loads(meta["mean"]) == list(cfg.data.mean) and json.loads(meta["std"]) == list(cfg.data.std)


@pytest.mark.slow
def test_onnx_metadata_carries_a_mean_image(tmp_path, cli):
    ckpt = _checkpoint(tmp_path / "small.pt", "small")
    state = torch.load(ckpt, weights_only=True)
    state["mean_image"] = torch.rand(1, 28, 28) * 255  # what a model trained with §2's mean image carries
    torch.save(state, ckpt)
    rc, _, err = cli("export", ckpt, "--onnx", tmp_path / "m.onnx")
    assert rc == 0, err
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    assert "mean" not in meta and "mean_image" in meta["preprocessing"]
    got = torch.tensor(json.loads(meta["mean_image"]))
    assert got.shape == (1, 28, 28) and (got - state["mean_image"]).abs().max() <= 1e-4


def test_lrn_export_path_is_the_same_function():
    """The plain expression used while exporting gives the torch-operations Function's numbers
    exactly (the fused C kernel's are compared with float64 in test_lrn.py)."""
    from alexnet.core.lrn import LocalResponseNorm, lrn_expression

    lrn = LocalResponseNorm(96)
    x = torch.randn(2, 96, 13, 13) * 30
    for layout in (torch.contiguous_format, torch.channels_last):
        xl = x.contiguous(memory_format=layout)
        assert torch.equal(lrn(xl), lrn_expression(xl, lrn.band, lrn.size, lrn.k, lrn.alpha, lrn.beta))


def test_export_bad_input(cli, tmp_path, one_line_error):
    rc, _, err = cli("export", tmp_path / "missing.pt", "--onnx", tmp_path / "m.onnx")
    one_line_error(rc, err, str(tmp_path / "missing.pt"))
    ckpt = _checkpoint(tmp_path / "small.pt", "small")
    rc, _, err = cli("export", ckpt, "--onnx", tmp_path / "m.onnx", "--batch-size", "0")
    one_line_error(rc, err, "batch-size")
    assert not (tmp_path / "m.onnx").exists()
