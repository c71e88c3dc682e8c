"""The ImageNet input pipeline, per core: what feeds a GPU, and what a store costs.

    python benchmarks/pipeline.py [--images N] [--repeats R] [--index 1281167] [--quick]

Builds an ImageNet-like folder from scikit-image's colour photos (crops at their own
resolution, shorter side 333-500, a texture and a little sensor noise blended in so that
the JPEGs have ImageNet-like sizes, a few large ones), the same images as ImageNet's
three downloads (a tar of per-class tars, a flat validation tar, a devkit), and measures
in ONE process with ONE torch thread (so "per core"):

1. images/s into uint8 batches: this package's folder path (decode, shorter side 256,
   centre 256), torchvision ImageFolder + RandomResizedCrop, a raw store (a gather from
   the page cache), and a JPEG store with each decoder (simplejpeg = libjpeg-turbo, PIL,
   torchvision.io.decode_jpeg: deprecated in torchvision 0.29);
2. bytes per image and PSNR against the raw 256x256 patch, by JPEG quality;
3. pack images/s per core, from the tars and from the folder;
4. the RSS of a decoding worker process over a store of `--index` images (a synthetic
   store: one small JPEG repeated) against one of 1,000;
5. a projection for all of ImageNet on 16 cores. Projections are arithmetic on the
   numbers above and say so; the GPU's appetite is the issue's estimate, not measured.

Printed with the CPU model, torch version and command: paste into docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from alexnet.config import DataConfig  # noqa: E402
from alexnet.data.datasets import load_split  # noqa: E402
from alexnet.data.pack import pack  # noqa: E402

IMAGENET_TRAIN = 1_281_167
QUIET = {"log": lambda *a: None}
SYNTHETIC_SIZE = 16  # the synthetic store's images: small, only its index is ImageNet's size


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def best_of(fn, repeats: int) -> float:
    """Median seconds of `repeats` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def make_photos(root: Path, count: int, classes: int = 4, seed: int = 0) -> Path:
    """ROOT/train/<wnid>/<wnid>_<i>.JPEG and ROOT/val/<wnid>/...: ImageNet-like JPEGs."""
    from PIL import Image
    from skimage import data as sk

    photos = [
        sk.astronaut(),
        sk.coffee(),
        sk.chelsea(),
        sk.rocket(),
        sk.immunohistochemistry(),
        sk.hubble_deep_field(),
        sk.retina(),
        sk.stereo_motorcycle()[0],
    ]
    textures = [sk.grass(), sk.gravel(), sk.brick()]
    rng = np.random.default_rng(seed)
    for i in range(count + classes):
        photo = photos[i % len(photos)]
        h, w = photo.shape[:2]
        ch, cw = int(h * rng.uniform(0.6, 1.0)), int(w * rng.uniform(0.6, 1.0))
        top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        crop = Image.fromarray(photo[top : top + ch, left : left + cw])
        short = int(rng.integers(333, 501)) if i % 25 else 800  # a few large ones
        scale = short / min(crop.size)
        size = (max(short, round(crop.width * scale)), max(short, round(crop.height * scale)))
        size = (min(size[0], int(short * 1.5)), min(size[1], int(short * 1.5)))
        img = np.asarray(crop.resize(size, Image.BICUBIC)).astype(np.float32)
        tex = np.asarray(Image.fromarray(textures[i % 3]).resize(size, Image.BILINEAR), dtype=np.float32)
        img = img * 0.85 + (tex[..., None] - tex.mean()) * 0.35 + rng.normal(0, 4, img.shape)
        split, k = ("val", i - count) if i >= count else ("train", i)
        wnid = f"n{1000000 + (k % classes):08d}"
        d = root / split / wnid
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(d / f"{wnid}_{k}.JPEG", quality=92)
    return root


def make_downloads(folder: Path, out: Path) -> Path:
    """The folder as ImageNet's three downloads (see alexnet/data/sources.py)."""
    import scipy.io

    out.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out / "ILSVRC2012_img_train.tar", "w") as outer:
        for d in sorted((folder / "train").iterdir()):
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w") as inner:
                for f in sorted(d.iterdir()):
                    inner.add(f, arcname=f.name)
            info = tarfile.TarInfo(f"{d.name}.tar")
            info.size = buf.tell()
            buf.seek(0)
            outer.addfile(info, buf)
    wnids = sorted(d.name for d in (folder / "train").iterdir())
    ids = {w: len(wnids) - k for k, w in enumerate(wnids)}  # not in sorted order, as in the devkit
    truth = []
    with tarfile.open(out / "ILSVRC2012_img_val.tar", "w") as tar:
        for k, f in enumerate(sorted((folder / "val").rglob("*.JPEG"))):
            tar.add(f, arcname=f"ILSVRC2012_val_{k + 1:08d}.JPEG")
            truth.append(ids[f.parent.name])
    devkit = out / "devkit" / "ILSVRC2012_devkit_t12" / "data"
    devkit.mkdir(parents=True, exist_ok=True)
    (devkit / "ILSVRC2012_validation_ground_truth.txt").write_text("\n".join(map(str, truth)) + "\n")
    synsets = np.array(
        [(ids[w], w, w, "", 0) for w in wnids],
        dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O"), ("gloss", "O"), ("num_children", "O")],
    )
    scipy.io.savemat(devkit / "meta.mat", {"synsets": synsets})
    with tarfile.open(out / "ILSVRC2012_devkit_t12.tar.gz", "w:gz") as tar:
        tar.add(devkit.parent, arcname="ILSVRC2012_devkit_t12")
    return out


def table(title: str, rows: list[tuple[str, str]]) -> None:
    print(f"\n{title}")
    width = max(len(name) for name, _ in rows) + 2
    for name, value in rows:
        print(f"  {name:<{width}}{value}")


def measure_readers(folder: Path, raw: Path, jpeg: Path, repeats: int) -> dict[str, float]:
    """images/s per core of each way into uint8 batches of 64."""
    from torchvision import datasets, transforms
    from torchvision.io import decode_jpeg

    from alexnet.data import store

    rates = {}

    def through(split):
        def go():
            for _ in split.loader:
                pass

        return go

    ours = load_split(True, DataConfig(name=str(folder), workers=0), 64, ordered=True)
    n = ours.size
    rates["folder path: decode, shorter side 256, centre 256"] = n / best_of(through(ours), repeats)
    usual = transforms.Compose(
        [transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(), transforms.PILToTensor()]
    )
    tv = datasets.ImageFolder(str(folder / "train"), transform=usual)
    rates["torchvision ImageFolder + RandomResizedCrop 224"] = n / best_of(lambda: [tv[i] for i in range(n)], repeats)
    rates["raw store: gather from the page cache"] = n / best_of(
        through(load_split(True, DataConfig(name=str(raw), workers=0), 64, ordered=True)), repeats
    )
    split = load_split(True, DataConfig(name=str(jpeg), workers=0), 64, ordered=True)
    simplejpeg = store.simplejpeg
    if simplejpeg is not None:
        rates["JPEG store: simplejpeg (libjpeg-turbo)"] = n / best_of(through(split), repeats)
    store.simplejpeg = None
    try:
        rates["JPEG store: PIL"] = n / best_of(through(split), repeats)
    finally:
        store.simplejpeg = simplejpeg
    images = split.loader.images
    blobs = [
        torch.frombuffer(
            bytearray(images._maps[0][images._offsets_map[i] : images._offsets_map[i + 1]]), dtype=torch.uint8
        )
        for i in range(n)
    ]
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        rates["JPEG store: torchvision.io.decode_jpeg (deprecated)"] = n / best_of(
            lambda: torch.stack([decode_jpeg(b) for b in blobs]), repeats
        )
    return rates


def measure_quality(raw: Path, qualities: list[int]) -> list[tuple[int, float, float]]:
    """(quality, mean bytes, PSNR dB) of re-encoding the raw store's training images."""
    from PIL import Image

    split = load_split(True, DataConfig(name=str(raw), workers=0), 64, ordered=True)
    x = torch.cat([b for b, _ in split.loader])
    rows = []
    for q in qualities:
        sizes, se = [], 0.0
        for img in x:
            buf = io.BytesIO()
            Image.fromarray(img.permute(1, 2, 0).numpy()).save(buf, format="JPEG", quality=q)
            sizes.append(buf.tell())
            back = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"), dtype=np.float64)
            se += float(((back - img.permute(1, 2, 0).numpy()) ** 2).mean())
        mse = se / len(x)
        rows.append((q, statistics.mean(sizes), 10 * np.log10(255**2 / mse)))
    return rows


def worker_rss(store_path: Path, batches: int = 8) -> tuple[dict[str, int], dict[str, int]]:
    """(RssAnon, RssFile) in kB of one decoding worker after `batches` batches, and of the
    main process. RssAnon is the process's own memory; RssFile counts the pages of
    memory-mapped files it has touched (the shards, the offsets), which the kernel shares
    and may drop."""
    split = load_split(True, DataConfig(name=str(store_path), workers=1, resize=SYNTHETIC_SIZE), 64)
    it = iter(split.loader._loader)
    for _ in range(batches):
        next(it)

    def rss(p: int) -> dict[str, int]:
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{p}/status").read_text().splitlines())
        return {k: int(fields[k].split()[0]) for k in ("RssAnon", "RssFile")}

    out = rss(it._workers[0].pid), rss(os.getpid())
    del it
    return out


def synthetic_store(root: Path, count: int) -> Path:
    """A JPEG store of `count` entries, all the same 16x16 JPEG: only the index is large."""
    from PIL import Image

    from alexnet.run.jsonio import write_json

    buf = io.BytesIO()
    Image.fromarray(np.full((SYNTHETIC_SIZE, SYNTHETIC_SIZE, 3), 128, np.uint8)).save(buf, format="JPEG", quality=90)
    one = buf.getvalue()
    root.mkdir(parents=True)
    shards = []
    for split, n in (("train", count), ("val", 1)):
        with open(root / f"{split}-00000.jpg", "wb") as f:
            chunk = one * 10_000
            for start in range(0, n, 10_000):
                f.write(chunk if n - start >= 10_000 else one * (n - start))
        np.save(root / f"{split}-offsets.npy", np.arange(n + 1, dtype=np.int64) * len(one))
        np.save(root / f"{split}-labels.npy", np.zeros(n, np.int64))
        shards.append({"count": n, "shards": [{"file": f"{split}-00000.jpg", "count": n, "bytes": n * len(one)}]})
    write_json(
        root / "pack.json",
        {
            "format": "alexnet-pack",
            "version": 2,
            "encoding": "jpeg",
            "resize": SYNTHETIC_SIZE,
            "channels": 3,
            "classes": ["a"],
            "splits": {s: {**v, "unreadable": [], "fingerprint": s} for s, v in zip(("train", "val"), shards)},
        },
    )
    return root


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=240, help="training images of the ImageNet-like folder")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--index", type=int, default=IMAGENET_TRAIN, help="entries of the synthetic store (RSS)")
    p.add_argument("--qualities", type=int, nargs="+", default=[75, 80, 85, 90, 95])
    args = p.parse_args()
    torch.set_num_threads(1)
    print(f"CPU: {cpu_model()}; torch {torch.__version__}; python {platform.python_version()}")
    print(f"command: python {' '.join(sys.argv)}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folder = make_photos(root / "folder", args.images)
        files = sorted((folder / "train").rglob("*.JPEG"))
        sizes = [f.stat().st_size for f in files]
        print(
            f"\nImageNet-like folder: {len(files)} training JPEGs, mean {statistics.mean(sizes) / 1000:.1f} KB "
            f"(min {min(sizes) / 1000:.1f}, max {max(sizes) / 1000:.1f}); ImageNet's mean is about 110 KB"
        )
        downloads = make_downloads(folder, root / "downloads")
        packs = {}
        cores = len(os.sched_getaffinity(0))
        for name, src, workers in (
            ("from the tars", downloads, 0),
            ("from the folder", folder, 0),
            (f"from the tars, {cores} worker processes (all cores)", downloads, cores),
        ):
            out = root / f"store-{name.split()[2].rstrip(',')}-{workers}"
            t = time.perf_counter()
            pack(str(src), str(out), workers=workers, **QUIET)
            packs[name] = (len(files) + 4) / (time.perf_counter() - t)
        raw = root / "store-raw"
        pack(str(folder), str(raw), workers=0, encoding="raw", **QUIET)
        jpeg = root / "store-folder-0"
        table(
            "pack: decode, resize, centre 256, encode JPEG q90 (one core unless said)",
            [(k, f"{v:,.0f} images/s") for k, v in packs.items()],
        )

        rates = measure_readers(folder, raw, jpeg, args.repeats)
        base = rates["folder path: decode, shorter side 256, centre 256"]
        table(
            f"into uint8 batches of 64, one core, {len(files)} images (median of {args.repeats})",
            [(k, f"{v:8,.0f} images/s  {v / base:5.2f}x the folder path") for k, v in rates.items()],
        )
        q = measure_quality(raw, args.qualities)
        table(
            "JPEG quality of the stored 256x256 patch (raw: 196,608 bytes an image)",
            [
                (f"quality {k}", f"{b / 1000:6.1f} KB an image ({196608 / b:4.1f}x smaller), PSNR {db:5.2f} dB; "
                 f"ImageNet {b * IMAGENET_TRAIN / 1e9:5.1f} GB")
                for k, b, db in q
            ],
        )  # fmt: skip
        small = worker_rss(synthetic_store(root / "synthetic-small", 1_000))
        large = worker_rss(synthetic_store(root / "synthetic-large", args.index))
        mb = lambda kb: f"{kb / 1024:6.1f} MB"  # noqa: E731
        table(
            "memory of a decoding worker after 8 batches: own (RssAnon) and mapped files (RssFile)",
            [
                ("1,000 entries", f"own {mb(small[0]['RssAnon'])}, files {mb(small[0]['RssFile'])}"),
                (f"{args.index:,} entries", f"own {mb(large[0]['RssAnon'])}, files {mb(large[0]['RssFile'])}"),
                ("growth of its own memory", mb(large[0]["RssAnon"] - small[0]["RssAnon"])),
                ("the main process, own", f"{mb(small[1]['RssAnon'])} and {mb(large[1]['RssAnon'])}"),
            ],
        )
        decode = rates.get("JPEG store: simplejpeg (libjpeg-turbo)", rates["JPEG store: PIL"])
        pack_rate = packs["from the tars"]
        b90 = next((b for k, b, _ in q if k == 90), q[-1][1])
        n, gb = IMAGENET_TRAIN, 1e9
        rows = [
            ("pack (16 processes)", f"{n / (pack_rate * 16) / 60:5.1f} min at {pack_rate:,.0f} images/s a core"),
            ("store size at q90", f"{b90 * n / gb:5.1f} GB (raw: {196608 * n / gb:.0f} GB)"),
            ("loader, 15 decoding workers", f"{decode * 15:,.0f} images/s; an epoch in {n / (decode * 15):.0f} s"),
            ("folder path, 15 workers", f"{base * 15:,.0f} images/s; an epoch in {n / (base * 15):.0f} s"),
            ("an H100's appetite (estimate)", "15,000-30,000 images/s in bf16 (issue 18; not measured)"),
        ]
        table("projection for ImageNet (1,281,167 training images) on 16 cores: arithmetic, not measured", rows)


if __name__ == "__main__":
    main()
