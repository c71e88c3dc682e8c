"""Speed against torchvision, measured side by side in one process; only ratios count.

    python benchmarks/speed.py [small] [train] [infer] [pipeline] [--device cpu|cuda] [--batch N]
                               [--repeats R] [--compile] [--images N]

Every measure alternates baseline and candidates, after warm-up, and reports the median
of R repeats. Printed with the machine, torch version and the command: paste into
docs/BENCHMARKS.md.

small     the Fashion-MNIST recipe's training step (model `small`, batch 128): fp32, bf16
          and --amp auto's choice, with model GFLOP/s as a fraction of the fp32 matmul peak.
train     one SGD step (forward, backward, update) of the `paper` model against
          torchvision.models.alexnet, eager fp32, same batch (ours at 227, torchvision at
          224, each its own native size); also "plain port" = ours with
          torch.nn.LocalResponseNorm, ours with bf16 autocast + channels_last (+ torch.compile
          with --compile), and ours with what --amp auto picks. torchvision and the plain
          port step with torch.optim.SGD's defaults, ours with its training optimizer (fused SGD).
infer     images/s at batch 32 and batch-1 latency: torchvision eager fp32 against ours
          fp32, bf16 + channels_last, compiled, and ONNX Runtime (CPU).
pipeline  images/s per worker process of the input pipeline on real JPEGs of ImageNet-like
          sizes (400x350 to 500x500, re-encoded from scikit-image's photos): torchvision
          ImageFolder + RandomResizedCrop/flip/ToTensor/Normalize against ours (decode,
          resize, centre 256 as uint8; crops, mirrors and lighting batched) and against a
          packed store (alexnet pack).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from alexnet.config import TrainConfig
from alexnet.core.lrn import select_kernel, set_kernel
from alexnet.core.model import build_model
from alexnet.core.optim import make_optimizer
from alexnet.run.plan import PRECISION_NAMES
from alexnet.run.runtime import autocast, tune_allocator


def median_times(fns: dict, repeats: int, warmup: int = 2, sync=lambda: None) -> dict:
    """Seconds per call of each fn, alternating between them every repeat; median."""
    times = {k: [] for k in fns}
    for i in range(warmup + repeats):
        for name, fn in fns.items():
            sync()
            t = time.perf_counter()
            fn()
            sync()
            if i >= warmup:
                times[name].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def table(title: str, rows: list[tuple[str, float, float]], unit: str) -> None:
    """rows: (name, value, ratio to the first row)."""
    print(f"\n{title}")
    print(f"{'':<52}{unit:>12}{'ratio':>9}")
    for name, value, ratio in rows:
        print(f"{name:<52}{value:>12.1f}{ratio:>8.2f}x")


def plain_port(model):
    """Ours with torch.nn.LocalResponseNorm in place of alexnet.core.lrn (same constants)."""
    from alexnet.core.lrn import LocalResponseNorm

    for i, m in enumerate(model.features):
        if isinstance(m, LocalResponseNorm):
            model.features[i] = torch.nn.LocalResponseNorm(m.size, alpha=m.alpha * m.size, beta=m.beta, k=m.k)
    return model


def bench_train(args, device, sync) -> None:
    import torchvision

    b = args.batch
    candidates = {
        "torchvision alexnet, eager fp32": (torchvision.models.alexnet(), 224, "off", False, False),
        "plain port (nn.LocalResponseNorm), fp32": (plain_port(build_model("paper")), 227, "off", False, False),
        "alexnet paper, eager fp32": (build_model("paper"), 227, "off", False, False),
        "alexnet paper, fp32 channels_last": (build_model("paper"), 227, "off", True, False),
        "alexnet paper, bf16 channels_last": (build_model("paper"), 227, "bf16", True, False),
    }
    if args.compile:
        candidates["alexnet paper, bf16 channels_last, compiled"] = (build_model("paper"), 227, "bf16", True, True)
    auto = auto_precision(build_model("paper"), 3, 227, b, device)
    print(f"--amp auto, paper model, batch {b}: {auto.describe()}")
    candidates[f"alexnet paper, --amp auto ({PRECISION_NAMES[auto.amp]}) channels_last"] = (
        build_model("paper"),
        227,
        auto.amp,
        True,
        False,
    )
    steps = {}
    for name, (model, size, amp, cl, compiled) in candidates.items():
        fmt = torch.channels_last if cl else torch.contiguous_format
        model = model.to(device, memory_format=fmt).train()
        net = torch.compile(model) if compiled else model
        if name.startswith("alexnet"):  # our training step's optimizer (fused SGD)
            opt = make_optimizer(model, TrainConfig(lr=1e-4, momentum=0.9, weight_decay=5e-4))
        else:  # what a torchvision user writes
            opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, weight_decay=5e-4)
        x = torch.randn(b, 3, size, size, device=device).contiguous(memory_format=fmt)
        y = torch.randint(0, 1000, (b,), device=device)

        def step(net=net, opt=opt, x=x, y=y, amp=amp):
            for _ in range(args.inner):
                with autocast(device, amp):
                    loss = F.cross_entropy(net(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

        steps[name] = step
    t = median_times(steps, args.repeats, sync=sync)
    base = t["torchvision alexnet, eager fp32"]
    rows = [(k, b * args.inner / v, base / v) for k, v in t.items()]
    table(f"training step, batch {b}, {device}, synthetic input", rows, "images/s")
    project(rows)


def auto_precision(model, channels: int, size: int, batch: int, device):
    """What `alexnet train --amp auto` chooses for this model and batch on this machine."""
    from alexnet.core.engine import train_step
    from alexnet.run.plan import choose_precision, training_step_timer

    model = model.to(device, memory_format=torch.channels_last)
    x = torch.randn(batch, channels, size, size, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, model.config.num_classes, (batch,), device=device)
    measure = training_step_timer(
        model,
        lambda m: make_optimizer(m, TrainConfig()),
        lambda r, o, s, xx, yy, amp: train_step(r, o, s, xx, yy, amp),
        (x, y),
        device,
    )
    return choose_precision("auto", device, measure)


def matmul_peak(device, sync, n: int = 2048, repeats: int = 5) -> float:
    """GFLOP/s of an n x n fp32 matrix product: the machine's practical fp32 peak."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    t = median_times({"mm": lambda: a @ b}, repeats, sync=sync)["mm"]
    return 2 * n**3 / t / 1e9


def bench_small(args, device, sync) -> None:
    """The Fashion-MNIST recipe's training step (model `small`, batch 128, label smoothing,
    fused SGD): fp32, bf16 and what --amp auto picks; model GFLOP/s (3x the forward's
    multiply-adds, 2 FLOPs each) and their fraction of the fp32 matmul peak."""
    from alexnet.core.engine import train_step
    from alexnet.core.model import summarize
    from alexnet.core.recipes import resolve

    cfg = resolve("fashion-mnist", {}, {}, {})
    m, b = cfg.model, cfg.train.batch_size
    flops = 6 * summarize(build_model(m.name, **{k: v for k, v in m.to_dict().items() if k != "name"}))["macs"]
    auto = auto_precision(build_model("small", init=m.init), m.in_channels, m.input_size, b, device)
    print(f"--amp auto, small model, batch {b}: {auto.describe()}")
    kernel, why = select_kernel("auto") if device.type == "cpu" else ("torch", "not on the CPU")
    print(f"LRN kernel (--lrn-kernel auto): {kernel} ({why})")
    steps = {}
    # "off-torch": fp32 with the LRN as torch operations, the fp32 path before the fused kernel
    for key, amp, lrn_kernel in (("off-torch", "off", "torch"), ("off", "off", kernel), ("bf16", "bf16", kernel)):
        model = build_model("small", init=m.init).to(device, memory_format=torch.channels_last)
        set_kernel(model, lrn_kernel)
        opt = make_optimizer(model, cfg.train)
        scaler = torch.amp.GradScaler(device.type, enabled=False)
        x = torch.randn(b, 1, m.input_size, m.input_size, device=device).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 10, (b,), device=device)

        def step(model=model, opt=opt, scaler=scaler, x=x, y=y, amp=amp) -> None:
            train_step(model, opt, scaler, x, y, amp, cfg.train.label_smoothing)

        steps[key] = step
    t = median_times(steps, args.repeats * 4, sync=sync)
    peak = matmul_peak(device, sync)
    print(
        f"\nsmall model training step, batch {b}, {device}: {flops / 1e6:.0f} MFLOP per image; "
        f"fp32 matmul peak {peak:.0f} GFLOP/s (2048 x 2048)"
    )
    print(f"{'':<28}{'images/s':>10}{'ratio':>8}{'GFLOP/s':>10}{'of peak':>9}")
    rows = (
        ("fp32, LRN torch operations", "off-torch"),
        (f"fp32, LRN {kernel}", "off"),
        ("bf16", "bf16"),
        (f"auto ({PRECISION_NAMES[auto.amp]})", auto.amp),
    )
    for name, key in rows:
        rate = b / t[key]
        print(
            f"{name:<28}{rate:>10.0f}{t['off-torch'] / t[key]:>7.2f}x{rate * flops / 1e9:>10.1f}"
            f"{rate * flops / 1e9 / peak:>8.0%}"
        )


IMAGENET_TRAIN = 1_281_167  # ILSVRC-2012 training images


def project(rows) -> None:
    """Hours for 90 epochs over ImageNet at each measured rate (§5's schedule length)."""
    print(
        "  projected 90 ImageNet epochs: "
        + "; ".join(f"{name}: {90 * IMAGENET_TRAIN / rate / 3600:.1f} h" for name, rate, _ in rows)
    )


def bench_infer(args, device, sync) -> None:
    import torchvision

    out = {}
    models = {
        "torchvision alexnet, eager fp32": (torchvision.models.alexnet().eval(), 224, "off", False),
        "alexnet paper, fp32 channels_last": (build_model("paper").eval(), 227, "off", True),
        "alexnet paper, bf16 channels_last": (build_model("paper").eval(), 227, "bf16", True),
    }
    if args.compile:
        models["alexnet paper, bf16 channels_last, compiled"] = (build_model("paper").eval(), 227, "bf16", True)
    for batch in (32, 1):
        fns = {}
        for name, (model, size, amp, cl) in models.items():
            fmt = torch.channels_last if cl else torch.contiguous_format
            model = model.to(device, memory_format=fmt)
            net = torch.compile(model) if "compiled" in name else model
            x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=fmt)

            @torch.no_grad()
            def run(net=net, x=x, amp=amp):
                with autocast(device, amp):
                    net(x)

            fns[name] = run
        if device.type == "cpu":
            fns["alexnet paper, ONNX Runtime fp32"] = _onnx_runner(batch)
        out[batch] = median_times(fns, args.repeats, sync=sync)
    base32 = out[32]["torchvision alexnet, eager fp32"]
    table("inference, batch 32", [(k, 32 / v, base32 / v) for k, v in out[32].items()], "images/s")
    base1 = out[1]["torchvision alexnet, eager fp32"]
    table("inference, batch 1", [(k, v * 1e3, base1 / v) for k, v in out[1].items()], "latency ms")


def _onnx_runner(batch: int):
    import onnxruntime as ort

    model = build_model("paper").eval()
    path = Path(tempfile.mkdtemp()) / "paper.onnx"
    x = torch.randn(batch, 3, 227, 227)
    torch.onnx.export(
        model,
        (x,),
        str(path),
        input_names=["x"],
        output_names=["y"],
        dynamic_axes={"x": {0: "n"}, "y": {0: "n"}},
        opset_version=17,
        dynamo=False,
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {"x": x.numpy()}
    return lambda: session.run(None, feed)


def _jpegs(folder: Path, count: int, sides: tuple[int, int] = (350, 500)) -> Path:
    """count JPEGs with sides in `sides` (the longer at least 400 for ImageNet-like sizes)
    from scikit-image's photos in train/<class>/, and one per class in val/<class>/ (pack
    wants both splits)."""
    from PIL import Image
    from skimage import data as skdata

    photos = [skdata.astronaut(), skdata.coffee(), skdata.chelsea(), skdata.rocket()]
    g = torch.Generator().manual_seed(0)
    for i in range(count):
        img = Image.fromarray(photos[i % len(photos)])
        w, h = (int(v) for v in torch.randint(sides[0], sides[1] + 1, (2,), generator=g))
        w = max(w, min(400, sides[1]))
        d = folder / "train" / f"c{i % 4}"
        d.mkdir(parents=True, exist_ok=True)
        img.resize((w, h)).save(d / f"{i}.jpg", quality=90)
        if i < 4:
            (folder / "val" / f"c{i}").mkdir(parents=True, exist_ok=True)
            img.resize((w, h)).save(folder / "val" / f"c{i}" / f"{i}.jpg", quality=90)
    return folder


def bench_pipeline(args, device, sync) -> None:
    from torchvision import datasets, transforms

    from alexnet.config import DataConfig
    from alexnet.core.augment import Preprocess
    from alexnet.data.datasets import load_split
    from alexnet.data.pack import pack

    root = Path(tempfile.mkdtemp())
    data = _jpegs(root / "jpegs", args.images, args.sides)
    usual = transforms.Compose(
        [
            transforms.RandomResizedCrop(224),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ]
    )
    tv = datasets.ImageFolder(str(data / "train"), transform=usual)
    cfg = DataConfig(name=str(data), workers=0)
    ours = load_split(True, cfg, 32, ordered=True)
    pack(str(data), str(root / "packed"), workers=0, log=lambda *a: None)
    packed = load_split(True, DataConfig(name=str(root / "packed"), workers=0), 32, ordered=True)
    prep = Preprocess(cfg, 227, device)
    n = len(tv)

    def torchvision_usual():
        for i in range(n):
            tv[i]

    def run(split, augment: bool):
        def go():
            for x, _ in split.loader:
                if augment:
                    prep(x.to(device), train=True)

        return go

    t = median_times(
        {
            "torchvision ImageFolder + usual transforms": torchvision_usual,
            "alexnet folder: uint8 256 (a worker's part)": run(ours, False),
            "alexnet folder + crops/mirrors/lighting here": run(ours, True),
            "alexnet packed store: read (a worker's part)": run(packed, False),
            "alexnet packed store + crops/mirrors/lighting here": run(packed, True),
        },
        args.repeats,
        warmup=1,
        sync=sync,
    )
    base = t["torchvision ImageFolder + usual transforms"]
    lo, hi = args.sides
    table(
        f"input pipeline, {n} JPEGs of {max(lo, min(400, hi))}..{hi} x {lo}..{hi}, one process, {device}",
        [(k, n / v, base / v) for k, v in t.items()],
        "images/s",
    )


def bench_packed(args, device, sync) -> None:
    """Training end to end from a packed store: read, copy to the device, crop/mirror/light
    there, bf16 step of the `paper` model."""
    from alexnet.config import DataConfig
    from alexnet.core.augment import Preprocess
    from alexnet.data.datasets import load_split
    from alexnet.data.pack import pack

    root = Path(tempfile.mkdtemp())
    pack(str(_jpegs(root / "jpegs", args.images)), str(root / "packed"), workers=0, log=lambda *a: None)
    cfg = DataConfig(name=str(root / "packed"), workers=0)
    split = load_split(True, cfg, args.batch)
    model = build_model("paper", num_classes=4).to(device, memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, foreach=True)
    prep = Preprocess(cfg, 227, device)

    def epoch():
        for x, y in split.loader:
            x = prep(x.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else x, train=True)
            with autocast(device, "bf16"):
                loss = F.cross_entropy(model(x), y.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    t = median_times({"packed store -> bf16 paper step": epoch}, args.repeats, warmup=1, sync=sync)
    n = len(split.loader) * args.batch
    rows = [(k, n / v, 1.0) for k, v in t.items()]
    table(f"training from a packed store, {n} images per epoch, batch {args.batch}", rows, "images/s")
    project(rows)


def bench_decode(args, device, sync) -> None:
    """JPEG decoding: PIL on one CPU core against torchvision.io.decode_jpeg batched on the device."""
    from PIL import Image
    from torchvision.io import decode_jpeg

    root = _jpegs(Path(tempfile.mkdtemp()), args.images)
    files = sorted((root / "train").rglob("*.jpg"))
    blobs = [torch.frombuffer(bytearray(f.read_bytes()), dtype=torch.uint8) for f in files]

    def pil():
        for f in files:
            with Image.open(f) as img:
                img.convert("RGB").load()

    fns = {"PIL, one CPU core": pil}
    if device.type == "cuda":
        fns["torchvision.io.decode_jpeg, batched on cuda"] = lambda: decode_jpeg(blobs, device=device)
    t = median_times(fns, args.repeats, warmup=1, sync=sync)
    base = t["PIL, one CPU core"]
    table(
        f"JPEG decoding, {len(files)} images of 400x350..500x500",
        [(k, len(files) / v, base / v) for k, v in t.items()],
        "images/s",
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", nargs="*", default=["train", "infer", "pipeline"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=None, help="training batch (default 32 on CPU, 128 on GPU)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--compile", action="store_true", help="also torch.compile (slow to start on CPU)")
    p.add_argument("--images", type=int, default=200, help="JPEGs for the pipeline measure")
    p.add_argument(
        "--sides",
        type=int,
        nargs=2,
        default=(350, 500),
        metavar=("MIN", "MAX"),
        help="JPEG side lengths for the pipeline measure (ImageNet-like: 350 500)",
    )
    p.add_argument("--inner", type=int, default=None, help="steps per timed call (default 1 on CPU, 10 on GPU)")
    args = p.parse_args()
    device = torch.device(args.device)
    args.batch = args.batch or (128 if device.type == "cuda" else 32)
    args.inner = args.inner or (10 if device.type == "cuda" else 1)
    tune_allocator()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    name = torch.cuda.get_device_name() if device.type == "cuda" else (platform.processor() or platform.machine())
    print(f"$ python benchmarks/speed.py {' '.join(sys.argv[1:])}")
    print(f"torch {torch.__version__}, {name}, {torch.get_num_threads()} threads, median of {args.repeats}")
    for what in args.what:
        {
            "train": bench_train,
            "small": bench_small,
            "infer": bench_infer,
            "pipeline": bench_pipeline,
            "packed": bench_packed,
            "decode": bench_decode,
        }[what](args, device, sync)


if __name__ == "__main__":
    main()
