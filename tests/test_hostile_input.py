"""`alexnet predict` and `alexnet evaluate` against hostile input.

Every kind of input either works (a prediction comes back, and it is the right one: an
EXIF-rotated photo is seen upright, a 16-bit PNG is not turned white) or ends in exactly
one line `alexnet: error: <file>: <problem>` on stderr with exit status 2: never a
traceback, never a hang. The kinds that could hang or exhaust memory (decompression
bombs, a 1 x 20000 strip) run in a subprocess with a timeout.

Kinds tested: 38 (docs/RELIABILITY.md has the table of what each one does).
images (21): missing path, directory, empty file, text named .jpg, truncated JPEG (cut
  in half), truncated JPEG (only the end marker missing), CMYK JPEG, 16-bit PNG, RGBA
  PNG, palette PNG, 1x1 image, decompression bomb (900 MP, over 2 x MAX_IMAGE_PIXELS),
  100 MP image (between 1x and 2x MAX_IMAGE_PIXELS), 1 x 20000 strip, EXIF-rotated photo
  (orientations 3, 6, 8), animated GIF, 300 seeded random corruptions of JPEG/PNG/GIF/
  TIFF/BMP/WebP files, --topk 0, a bad image among good ones, more images than one
  batch, unreadable images inside an evaluate folder;
checkpoints (16): through predict and evaluate: missing, directory, empty, random
  bytes, truncated zip, byte flip in the zip's directory, torchvision state dict, config
  naming another variant than its weights, fewer class names than outputs, config
  without its data section, NaN weights, mean image with the wrong channels, mean image
  of the wrong size, truncated safetensors, safetensors without alexnet metadata;
  through predict: finite weights whose outputs overflow to NaN;
data (1): evaluate on a missing folder.
"""

import io
import json
import os
import random
import struct
import subprocess
import sys
import warnings
import zlib

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from alexnet.apps.predict import predict_files
from alexnet.core.augment import Preprocess
from alexnet.core.checkpoint import load_inference
from alexnet.data.datasets import load_image, stored_transform
from alexnet.run.errors import UserError

DEADLINE = 300  # seconds: a subprocess that takes longer hangs (a safety net, not a measure)

# `python -m alexnet` that ends (exit 99, "pixels decoded: ..." on stderr) the moment PIL is
# asked for pixels: ImageFile.load (every file's pixels go through it) or a decoder
NO_DECODING = """
import os, runpy, sys
from PIL import Image, ImageFile

def decoded(what):
    sys.stderr.write(f"pixels decoded: {what}\\n")
    sys.stderr.flush()
    os._exit(99)

ImageFile.ImageFile.load = lambda self, *args, **kwargs: decoded(self.filename)
Image._getdecoder = lambda mode, name, *args, **kwargs: decoded(f"{name} decoder")
runpy.run_module("alexnet", run_name="__main__", alter_sys=True)
"""


def cli_subprocess(*argv, decode=True):
    """`python -m alexnet ...` in a subprocess, stopped if it hangs: (rc, stdout, stderr).
    decode=False: the process ends (exit 99) the moment it decodes a pixel."""
    entry = ["-m", "alexnet"] if decode else ["-c", NO_DECODING]
    r = subprocess.run(
        [sys.executable, *entry, *map(str, argv)],
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    return r.returncode, r.stdout, r.stderr


_REAL_LOAD, _REAL_GETDECODER = ImageFile.ImageFile.load, Image._getdecoder


def watch_decoding(monkeypatch, refuse: bool = False) -> list[str]:
    """Records every request for pixels in this process (ImageFile.load: the image's file
    name; a PIL decoder: its name) in the list returned. refuse=True: a request fails
    with an AssertionError (which no handler in load_image catches) instead of decoding,
    so that a regression cannot decode a bomb in the test's process."""
    requests = []

    def request(what: str) -> None:
        requests.append(what)
        assert not refuse, f"{what}: pixels decoded"

    def load(self, *args, **kwargs):
        request(self.filename)
        return _REAL_LOAD(self, *args, **kwargs)

    def getdecoder(mode, name, *args, **kwargs):
        request(f"{name} decoder")
        return _REAL_GETDECODER(mode, name, *args, **kwargs)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    monkeypatch.setattr(Image, "_getdecoder", getdecoder)
    return requests


def png_header_bomb(path, width, height):
    """A valid 1-bit grayscale PNG of width x height black pixels, compressed ~1000:1,
    written without ever holding the image in memory."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    z = zlib.compressobj(9)
    row = bytes(1 + (width + 7) // 8)  # filter byte 0, then the packed bits
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def ckpt(fashion_run):
    return fashion_run / "last.pt"


@pytest.fixture(scope="module")
def files(tmp_path_factory, photos):
    from skimage import data as skdata

    d = tmp_path_factory.mktemp("hostile")
    f = {"missing": d / "missing.jpg", "directory": d / "a_folder.jpg"}
    f["directory"].mkdir()
    f["empty"] = d / "empty.jpg"
    f["empty"].write_bytes(b"")
    f["text"] = d / "notes.jpg"
    f["text"].write_text("not a picture\n")
    jpeg = photos["astronaut.jpg"].read_bytes()
    f["truncated"] = d / "truncated.jpg"
    f["truncated"].write_bytes(jpeg[: len(jpeg) // 2])
    f["no_end_marker"] = d / "no_eoi.jpg"
    f["no_end_marker"].write_bytes(jpeg[:-2])  # FF D9 cut off
    f["bomb"] = png_header_bomb(d / "bomb.png", 30000, 30000)  # 900 MP > 2 x 89.5 MP
    f["over_limit"] = png_header_bomb(d / "over_limit.png", 10000, 10000)  # 100 MP: PIL only warns
    f["strip"] = d / "strip.png"
    Image.new("L", (20000, 1), 128).save(f["strip"])

    cat = Image.fromarray(skdata.chelsea())  # 451 x 300, landscape
    for orientation in (3, 6, 8):
        exif = Image.Exif()
        exif[0x0112] = orientation
        cat.save(d / f"exif{orientation}.jpg", quality=95, exif=exif)
        f[f"exif{orientation}"] = d / f"exif{orientation}.jpg"
    cat.save(d / "plain.jpg", quality=95)  # the same pixels, no EXIF
    f["plain"] = d / "plain.jpg"

    frames = [cat.convert("P"), Image.fromarray(skdata.coffee()).resize(cat.size).convert("P")]
    f["gif"] = d / "animated.gif"
    frames[0].save(f["gif"], save_all=True, append_images=frames[1:], duration=100, loop=0)
    f["gif_frames"] = frames
    return f


# ------------------------------------------------------------------- images: errors


@pytest.mark.slow
@pytest.mark.parametrize(
    "kind, needle",
    [
        ("missing", "no such file"),
        ("directory", "not a file"),
        ("empty", "not a readable image"),
        ("text", "not a readable image"),
        # A truncated JPEG is an error, not a partial decode: PIL could fill the missing rows
        # with grey (ImageFile.LOAD_TRUNCATED_IMAGES), but the model would then classify a
        # half-grey photo with confidence and nobody would know. Even a file missing only its
        # 2-byte end marker is refused: PIL is strict there, and so are we.
        ("truncated", "truncated"),
        ("no_end_marker", "truncated"),
    ],
)
def test_unreadable_images_are_one_line_errors(kind, needle, ckpt, files, cli, one_line_error):
    rc, out, err = cli("predict", ckpt, files[kind])
    one_line_error(rc, err, files[kind], needle)
    assert out == ""


@pytest.mark.slow
def test_a_bad_image_among_good_ones_fails_the_whole_call(ckpt, files, photos, cli, one_line_error):
    rc, out, err = cli("predict", ckpt, photos["astronaut.jpg"], files["truncated"], photos["coffee.png"])
    one_line_error(rc, err, files["truncated"])
    assert out == ""  # all or nothing: no partial list that looks complete


@pytest.mark.slow
@pytest.mark.parametrize("kind, pixels", [("bomb", "900,000,000"), ("over_limit", "100,000,000")])
def test_decompression_bombs_are_refused_from_the_header(
    kind, pixels, ckpt, files, photos, one_line_error, monkeypatch
):
    assert files[kind].stat().st_size < 200_000  # a tiny file that claims a huge image
    # the command, in a process that ends the moment it decodes a pixel
    rc, out, err = cli_subprocess("predict", ckpt, files[kind], decode=False)
    line = one_line_error(rc, err, files[kind], pixels, "decompression bomb")
    assert f"{Image.MAX_IMAGE_PIXELS:,}" in line
    # load_image: refused before PIL is asked for a single pixel
    requests = watch_decoding(monkeypatch, refuse=True)
    with pytest.raises(UserError, match="decompression bomb"):
        load_image(files[kind], 3)
    assert requests == []
    requests = watch_decoding(monkeypatch)
    load_image(photos["tiny.png"], 3)  # the watch does see a decoded image
    assert str(photos["tiny.png"]) in requests


@pytest.mark.slow
def test_topk_below_one_is_an_error(ckpt, photos, cli, one_line_error):
    rc, _, err = cli("predict", ckpt, photos["astronaut.jpg"], "--topk", "0")
    one_line_error(rc, err, "--topk")


# -------------------------------------------------------------- images: predictions


@pytest.mark.slow
@pytest.mark.parametrize(
    "name", ["chelsea_cmyk.jpg", "camera_16bit.png", "chelsea_rgba.png", "chelsea_palette.png", "tiny.png"]
)
def test_unusual_modes_predict(name, ckpt, photos, cli):
    rc, out, err = cli("predict", ckpt, photos[name], "--json")
    assert rc == 0 and err == "", err
    [r] = json.loads(out)
    probs = [p["probability"] for p in r["predictions"]]
    assert len(probs) == 5 and all(0 <= p <= 1 for p in probs) and sum(probs) <= 1 + 1e-6


def test_modes_convert_to_the_right_pixels(photos):
    from skimage import data as skdata

    def pixels(name, channels):
        return np.asarray(load_image(photos[name], channels)).astype(int)

    cat = skdata.chelsea().astype(int)
    # 16-bit PNG: scaled to 8 bits; PIL's own convert clips it (almost every pixel 255)
    assert np.abs(pixels("camera_16bit.png", 1) - skdata.camera()).max() <= 1
    assert np.abs(pixels("camera_16bit.png", 3) - skdata.camera()[..., None]).max() <= 1
    # CMYK JPEG: the colours come back (within JPEG's error), not inverted
    assert np.abs(pixels("chelsea_cmyk.jpg", 3) - cat).mean() < 6
    # RGBA (opaque): alpha dropped, colours kept; palette: the palette's colours
    assert np.array_equal(pixels("chelsea_rgba.png", 3), cat)
    palette = np.asarray(Image.open(photos["chelsea_palette.png"]).convert("RGB")).astype(int)
    assert np.array_equal(pixels("chelsea_palette.png", 3), palette)
    assert np.abs(palette - cat).mean() < 25  # a 216-colour web palette, dithered
    # 1x1: one pixel, scaled up to the stored size in that colour
    x = stored_transform(256)(load_image(photos["tiny.png"], 3))
    assert x.shape == (3, 256, 256) and x[:, 0, 0].tolist() == [200, 10, 10]
    assert (x == x[:, :1, :1]).all()


@pytest.mark.slow
@pytest.mark.parametrize(
    "orientation, transpose",
    [(3, Image.Transpose.ROTATE_180), (6, Image.Transpose.ROTATE_270), (8, Image.Transpose.ROTATE_90)],
)
def test_exif_rotated_photo_is_seen_upright(orientation, transpose, files, fashion_run):
    rotated = load_image(files[f"exif{orientation}"], 3)
    upright = load_image(files["plain"], 3).transpose(transpose)  # rotated by hand
    assert rotated.size == upright.size == ((300, 451) if orientation != 3 else (451, 300))
    assert np.array_equal(np.asarray(rotated), np.asarray(upright))
    # and what the model is fed: the fashion model's preprocessing of the same file
    loaded = load_inference(fashion_run / "last.pt", torch.device("cpu"))
    cfg, m = loaded.config, loaded.config.model
    pre = Preprocess(cfg.data, m.input_size, torch.device("cpu"), False, loaded.mean_image)
    fed = [
        pre(stored_transform(cfg.data.resize)(img)[None])
        for img in (
            load_image(files[f"exif{orientation}"], 1),
            load_image(files["plain"], 1).transpose(transpose),
            load_image(files["plain"], 1),
        )
    ]
    assert torch.equal(fed[0], fed[1])
    assert not torch.equal(fed[0], fed[2])  # the rotation matters: the test can tell


@pytest.mark.slow
def test_exif_rotated_photo_predicts_as_the_rotated_file(ckpt, files, tmp_path, cli):
    by_hand = tmp_path / "by_hand.png"
    load_image(files["plain"], 3).transpose(Image.Transpose.ROTATE_270).save(by_hand)  # lossless
    rc, out, err = cli("predict", ckpt, files["exif6"], by_hand, "--json", "--topk", "10")
    assert rc == 0, err
    a, b = json.loads(out)
    assert a["predictions"] == b["predictions"]


@pytest.mark.slow
def test_animated_gif_gives_its_first_frame(ckpt, files, cli):
    first, second = (np.asarray(f.convert("RGB")) for f in files["gif_frames"])
    got = np.asarray(load_image(files["gif"], 3))
    assert np.array_equal(got, first) and not np.array_equal(got, second)
    rc, out, err = cli("predict", ckpt, files["gif"])
    assert rc == 0 and err == "" and str(files["gif"]) in out


@pytest.mark.slow
def test_strip_is_cropped_not_blown_up(ckpt, files):
    img = load_image(files["strip"], 3)
    assert img.size == (64, 1)  # the central 64:1; 256 x 5,120,000 pixels otherwise
    assert stored_transform(256)(img).shape == (3, 256, 256)
    rc, out, err = cli_subprocess("predict", ckpt, files["strip"], "--json")
    assert rc == 0, err
    assert len(json.loads(out)[0]["predictions"]) == 5


@pytest.mark.slow
def test_many_images_go_through_in_batches(ckpt, photos):
    images = [str(p) for p in photos.values()] * 3  # 30 files
    whole = predict_files(str(ckpt), images, topk=3, device="cpu")
    batched = predict_files(str(ckpt), images, topk=3, device="cpu", batch_size=4)
    assert [r["image"] for r in batched] == images
    for a, b in zip(whole, batched):
        assert [p["index"] for p in a["predictions"]] == [p["index"] for p in b["predictions"]]
        for p, q in zip(a["predictions"], b["predictions"]):
            assert p["probability"] == pytest.approx(q["probability"], abs=1e-4)


def test_random_corruptions_are_images_or_user_errors(tmp_path):
    """300 seeded corruptions (truncations, byte flips, both) of small real photos in six
    formats: load_image returns an image or raises UserError naming the file; no other
    exception type escapes (struct.error, zlib.error, IndexError, ... would be tracebacks)."""
    from skimage import data as skdata

    src = Image.fromarray(skdata.chelsea()).resize((60, 40))
    blobs = []
    for fmt in ("JPEG", "PNG", "GIF", "TIFF", "BMP", "WEBP"):
        b = io.BytesIO()
        (src.convert("P") if fmt == "GIF" else src).save(b, fmt)
        blobs.append(b.getvalue())
    rng = random.Random(0)
    path = tmp_path / "fuzzed.img"
    outcomes = {"image": 0, "error": 0}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Corrupt EXIF data" and the like
        for _ in range(300):
            b = bytearray(rng.choice(blobs))
            kind = rng.choice(["cut", "flip", "both"])
            if kind != "flip":
                b = b[: rng.randrange(len(b))]
            if kind != "cut":
                for _ in range(rng.randint(1, 20)):
                    if b:
                        b[rng.randrange(len(b))] = rng.randrange(256)
            path.write_bytes(bytes(b))
            try:
                img = load_image(path, 3)
                assert img.mode == "RGB" and min(img.size) >= 1
                outcomes["image"] += 1
            except UserError as e:
                assert str(path) in str(e) and "\n" not in str(e)
                outcomes["error"] += 1
    assert outcomes["image"] > 10 and outcomes["error"] > 100, outcomes


# --------------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def bad_ckpts(tmp_path_factory, fashion_run):
    import torchvision

    d = tmp_path_factory.mktemp("bad-ckpts")
    good = (fashion_run / "last.pt").read_bytes()
    state = torch.load(fashion_run / "last.pt", weights_only=True)
    c = {"missing": d / "missing.pt", "directory": d / "folder.pt"}
    c["directory"].mkdir()
    c["empty"] = d / "empty.pt"
    c["empty"].write_bytes(b"")
    c["random"] = d / "random.pt"
    c["random"].write_bytes(random.Random(0).randbytes(5000))
    c["truncated"] = d / "truncated.pt"
    c["truncated"].write_bytes(good[: len(good) // 2])
    flipped = bytearray(good)
    flipped[-30] ^= 0xFF  # inside the zip's end-of-central-directory record
    c["flipped"] = d / "flipped.pt"
    c["flipped"].write_bytes(bytes(flipped))
    c["torchvision"] = d / "alexnet-owt.pth"
    torch.save(torchvision.models.alexnet().state_dict(), c["torchvision"])

    def edited(name, edit):
        s = {**state, "config": {k: dict(v) for k, v in state["config"].items()}}
        edit(s)
        torch.save(s, d / name)
        return d / name

    c["variant"] = edited("variant.pt", lambda s: s["config"]["model"].update(name="owt", input_size=224))
    c["classes"] = edited("classes.pt", lambda s: s.update(classes=s["classes"][:4]))
    c["no_data_config"] = edited("no_data.pt", lambda s: s["config"].pop("data"))
    c["nan"] = edited(
        "nan.pt",
        lambda s: s.update(
            model={k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in s["model"].items()}
        ),
    )
    c["mean_image"] = edited("mean.pt", lambda s: s.update(mean_image=torch.zeros(3, 28, 28)))
    c["mean_image_size"] = edited("mean_size.pt", lambda s: s.update(mean_image=torch.zeros(1, 5, 5)))
    st = (fashion_run / "model.safetensors").read_bytes()
    c["safetensors_truncated"] = d / "truncated.safetensors"
    c["safetensors_truncated"].write_bytes(st[: len(st) // 2])
    from safetensors.torch import save_file

    c["safetensors_bare"] = d / "bare.safetensors"
    save_file({"features.0.weight": torch.zeros(2, 2)}, c["safetensors_bare"])
    return c


CHECKPOINT_KINDS = [
    ("missing", "no such checkpoint"),
    ("directory", "not a file"),
    ("empty", "empty file"),
    ("random", "not a readable checkpoint"),
    ("truncated", "truncated or corrupt"),
    ("flipped", "not a readable checkpoint"),
    ("torchvision", "alexnet import-torchvision"),
    ("variant", "do not fit"),
    ("classes", "4 classes for a model with 10 outputs"),
    ("no_data_config", "config is missing or invalid"),
    ("nan", "NaN"),
    ("mean_image", "mean image of shape (3, 28, 28) for a 1-channel model"),
    ("mean_image_size", "mean image of 5x5 pixels for images stored at 28x28"),
    ("safetensors_truncated", "not a readable safetensors checkpoint"),
    ("safetensors_bare", "without alexnet metadata"),
]


@pytest.mark.slow
@pytest.mark.parametrize("command", ["predict", "evaluate"])
@pytest.mark.parametrize("kind, needle", CHECKPOINT_KINDS)
def test_bad_checkpoints_are_one_line_errors(command, kind, needle, bad_ckpts, photos, cli, one_line_error):
    args = [photos["astronaut.jpg"]] if command == "predict" else ["--limit", "10"]
    rc, out, err = cli(command, bad_ckpts[kind], *args)
    one_line_error(rc, err, bad_ckpts[kind], needle)
    assert out == ""


@pytest.mark.slow
def test_predict_refuses_outputs_that_overflow(fashion_run, photos, tmp_path, cli, one_line_error):
    """Finite weights so large that the logits overflow: NaN probabilities are an error,
    not `nan%  Ankle boot`."""
    state = torch.load(fashion_run / "last.pt", weights_only=True)
    state["model"] = {k: v * 1e30 if v.is_floating_point() else v for k, v in state["model"].items()}
    huge = tmp_path / "huge.pt"
    torch.save(state, huge)
    rc, out, err = cli("predict", huge, photos["astronaut.jpg"])
    one_line_error(rc, err, huge, photos["astronaut.jpg"], "not finite")


@pytest.mark.slow
def test_evaluate_missing_data_folder(ckpt, tmp_path, cli, one_line_error):
    rc, _, err = cli("evaluate", ckpt, "--data", tmp_path / "nowhere")
    one_line_error(rc, err, tmp_path / "nowhere")


@pytest.mark.slow
def test_evaluate_folder_with_unreadable_images(tmp_path, files, photos, cli, one_line_error):
    """A val/ folder holding a text file named .jpg, a truncated JPEG and a decompression
    bomb beside six good photos: evaluate either skips them (and counts only the six) or
    stops with one line naming one of them; never a traceback (also from loader workers)."""
    from skimage import data as skdata

    from alexnet.config import DataConfig, ModelConfig, RunConfig, TrainConfig
    from alexnet.core.checkpoint import save_checkpoint
    from alexnet.core.model import AlexNet

    root = tmp_path / "folder"
    for split in ("train", "val"):
        for cls, arr in (("cat", skdata.chelsea()), ("coffee", skdata.coffee())):
            (root / split / cls).mkdir(parents=True)
            for i in range(3):
                Image.fromarray(arr).resize((100 + 10 * i, 90)).save(root / split / cls / f"{i}.jpg")
    bad = [
        root / "val" / "cat" / "notes.jpg",
        root / "val" / "cat" / "truncated.jpg",
        root / "val" / "coffee" / "bomb.png",
    ]
    bad[0].write_bytes(files["text"].read_bytes())
    bad[1].write_bytes(files["truncated"].read_bytes())
    bad[2].write_bytes(files["bomb"].read_bytes())
    m = ModelConfig(name="small", num_classes=2, in_channels=3, input_size=64, width=0.25)
    cfg = RunConfig(
        model=m, data=DataConfig(name=str(root), resize=72, mean_image=False, workers=1), train=TrainConfig()
    )
    ckpt = tmp_path / "folder.pt"
    save_checkpoint(
        ckpt,
        {
            "config": cfg.to_dict(),
            "classes": ["cat", "coffee"],
            "class_names": ["cat", "coffee"],
            "model": AlexNet(m).state_dict(),
        },
    )
    rc, out, err = cli("evaluate", ckpt, "--json", "--device", "cpu")
    assert "Traceback" not in err
    if rc == 0:
        assert json.loads(out)["images"] == 6
    else:
        line = one_line_error(rc, err)
        assert any(str(b) in line for b in bad), line
