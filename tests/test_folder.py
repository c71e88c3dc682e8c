"""An ImageNet-style folder (train/<class>/, val/<class>/) built from real photos."""

import json

import pytest

from alexnet.apps.cli import main

pytestmark = pytest.mark.slow  # every test trains


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from PIL import Image
    from skimage import data as skdata

    root = tmp_path_factory.mktemp("imagenet-style")
    sources = {
        "cat": Image.fromarray(skdata.chelsea()),
        "coffee": Image.fromarray(skdata.coffee()),
        "rocket": Image.fromarray(skdata.rocket()),
    }
    for split, count in (("train", 6), ("val", 2)):
        for cls, img in sources.items():
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(count):
                w, h = img.size
                crop = img.crop((i * 7, i * 5, w - i * 3, h - i * 4)).resize((300 + 40 * i, 260 + 30 * i))
                (crop.convert("L") if i == 1 else crop).save(d / f"{cls}_{i}.jpg")
    return root


def test_train_evaluate_predict_on_a_folder(folder, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(
        [
            "train",
            "--data",
            str(folder),
            "--model",
            "small",
            "--input-size",
            "64",
            "--epochs",
            "2",
            "--batch-size",
            "6",
            "--lr",
            "0.001",
            "--workers",
            "0",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"]["num_classes"] == 3 and cfg["model"]["in_channels"] == 3
    assert cfg["data"]["resize"] == 72  # 64 * 256 / 227: the paper's crop margin
    capsys.readouterr()
    assert main(["evaluate", str(out / "last.pt"), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["images"] == 6 and 0 <= r["top1"] <= r["top5"] <= 1
    assert main(["predict", str(out / "last.pt"), str(folder / "val" / "cat" / "cat_1.jpg"), "--json"]) == 0
    preds = json.loads(capsys.readouterr().out)[0]["predictions"]
    assert sorted(p["class"] for p in preds) == ["cat", "coffee", "rocket"]  # topk capped at 3


def test_paper_model_trains_a_step_on_a_folder(folder, tmp_path):
    rc = main(
        [
            "train",
            "--data",
            str(folder),
            "--epochs",
            "1",
            "--batch-size",
            "9",
            "--workers",
            "0",
            "--limit-val",
            "3",
            "--out",
            str(tmp_path / "paper"),
        ]
    )
    assert rc == 0
    cfg = json.loads((tmp_path / "paper" / "config.json").read_text())
    assert cfg["model"]["name"] == "paper" and cfg["model"]["input_size"] == 227
