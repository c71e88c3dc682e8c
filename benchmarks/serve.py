"""What each request of `alexnet serve` costs, for the small model and the paper's.

    PYTHONPATH=src python benchmarks/serve.py [--run DIR] [--repeats 5] [--paper-train 64] \
        [--index-limit N|all] [--models small,paper] [--burst 64]

Starts the server in this process on a free loopback port (what `alexnet serve --port 0`
does) and times each request from the client's side, as a script or the page sees it:
the upload's decode, the model, the PNG and base64 encoding, JSON and HTTP included. Each
figure is the median of --repeats requests after one that is not counted (PyTorch sets up
its kernels at the first forward pass of a batch shape); "server" is the median of the
response's own "seconds" (decode and model, no HTTP). Neighbours are timed cold (the
request that builds the fc7 index of every training image: repeated after dropping the
index from memory and from disk) and warm. Then a burst: --burst centre-patch predictions
sent at once (a connection each), the p50 and p99 of their latency from the client's side
and how many were answered (200; the others: 503, admission by expected wait).

- small: a run directory (--run; default: a run trained here for the purpose, `alexnet
  train --limit-train 2000 --epochs 1`), its training images for the index (the run's
  --limit-train, or --index-limit: `all` for Fashion-MNIST's 60,000).
- paper: the `paper` model with its random init, 1000 classes, 227x227 input and a
  per-pixel mean image, over a folder of --paper-train training images (256x256 JPEGs
  cut from scikit-image's photos).

The upload is scikit-image's astronaut, a 512x512 JPEG (92 KB), for both models.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from alexnet.apps.cli import main as alexnet
from alexnet.apps.serve import make_server
from alexnet.apps.session import find_checkpoint
from alexnet.config import DataConfig, RunConfig
from alexnet.core.checkpoint import save_checkpoint
from alexnet.core.model import build_model
from alexnet.run.runtime import tune_allocator

REQUESTS = [  # (label, method, path, with the upload)
    ("health (no model)", "GET", "/api/health", False),
    ("predict, centre patch", "POST", "/api/predict", True),
    ("predict, 10 patches (§4.1)", "POST", "/api/predict?ten_crop=1", True),
    ("activations (7 layers)", "POST", "/api/activations", True),
    ("occlusion, default window and stride", "POST", "/api/occlusion", True),
    ("neighbours, k = 6, index cold", "POST", "/api/neighbors", True),
    ("neighbours, k = 6, index warm", "POST", "/api/neighbors", True),
    ("filters (conv1, Figure 3)", "GET", "/api/filters", False),
]


def photo() -> bytes:
    from PIL import Image
    from skimage import data as skdata

    buf = io.BytesIO()
    Image.fromarray(skdata.astronaut()).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def small_run(out: Path) -> Path:
    rc = alexnet(["train", "--limit-train", "2000", "--epochs", "1", "--out", str(out)])
    if rc != 0:
        sys.exit(f"training the small model failed ({rc})")
    return out


def paper_checkpoint(root: Path, train_images: int) -> Path:
    """A random `paper` model over a folder of train_images JPEGs (and 4 validation ones)."""
    from PIL import Image
    from skimage import data as skdata

    photos = {"astronaut": skdata.astronaut(), "coffee": skdata.coffee(), "chelsea": skdata.chelsea()}
    for i in range(train_images + 4):
        name = list(photos)[i % 3]
        img = Image.fromarray(photos[name])
        w, h = img.size
        box = (i % 7 * 5, i % 5 * 7, w - i % 3 * 9, h - i % 4 * 6)
        split = "train" if i < train_images else "val"
        (root / split / name).mkdir(parents=True, exist_ok=True)
        img.crop(box).resize((256, 256)).save(root / split / name / f"{i}.jpg", quality=90)
    torch.manual_seed(0)
    model = build_model("paper")
    cfg = RunConfig(model=model.config, data=DataConfig(name=str(root), workers=0))
    mean = torch.full((3, 256, 256), 110.0)
    path = root / "paper.pt"
    save_checkpoint(
        path,
        {
            "config": cfg.to_dict(),
            "model": model.state_dict(),
            "mean_image": mean,
            "classes": [f"class_{i}" for i in range(1000)],
        },
    )
    return path


def call(port: int, method: str, path: str, body: bytes | None) -> tuple[float, dict, int]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=3600)
    start = time.perf_counter()
    conn.request(method, path, body=body)
    resp = conn.getresponse()
    data = resp.read()
    took = time.perf_counter() - start
    conn.close()
    if resp.status != 200:
        sys.exit(f"{method} {path}: {resp.status} {data[:300]!r}")
    return took, json.loads(data), len(data)


def burst(port: int, upload: bytes, n: int) -> tuple[float, float, int]:
    """n predictions sent at once: the p50 and p99 of their latency (s, answered ones) and
    how many were answered."""

    def one(_: int) -> tuple[float, int]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=3600)
        start = time.perf_counter()
        conn.request("POST", "/api/predict", body=upload)
        resp = conn.getresponse()
        resp.read()
        conn.close()
        return time.perf_counter() - start, resp.status

    with ThreadPoolExecutor(n) as pool:
        answers = list(pool.map(one, range(n)))
    times = sorted(t for t, status in answers if status == 200)
    if not times:
        return float("nan"), float("nan"), 0
    cuts = statistics.quantiles(times, n=100, method="inclusive") if len(times) > 1 else [times[0]] * 99
    return cuts[49], cuts[98], len(times)


def measure(target: Path, upload: bytes, repeats: int, index_limit: str | None, burst_n: int) -> dict[str, tuple]:
    """label -> (client median s, server median s or None, response bytes); "burst" ->
    (p50 s, p99 s, answered)."""
    import dataclasses

    httpd = make_server(target, "127.0.0.1", 0, "cpu")
    ins = httpd.session
    if index_limit:
        ins.data = dataclasses.replace(ins.data, limit_train=None if index_limit == "all" else int(index_limit))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    port, results = httpd.server_address[1], {}
    try:
        for label, method, path, with_upload in REQUESTS:
            body = upload if with_upload else None
            cold = "cold" in label
            if not cold:
                call(port, method, path, body)  # not counted: kernels set up, caches filled
            times, server, size = [], [], 0
            for _ in range(min(repeats, 3) if cold else repeats):
                if cold:  # forget the index, in memory and on disk
                    ins._index = None
                    for f in ins.checkpoint.parent.glob(f"{ins.checkpoint.stem}.fc7-*.safetensors"):
                        f.unlink()
                took, r, size = call(port, method, path, body)
                times.append(took)
                if "seconds" in r:
                    server.append(r["seconds"])
                if cold:
                    results["index images"] = r["train_images"]
                    server[-1] = r["index_seconds"]
            results[label] = (statistics.median(times), statistics.median(server) if server else None, size)
        results["burst"] = burst(port, upload, burst_n)
    finally:
        httpd.shutdown()
        httpd.server_close()
    return results


def table(results: dict[str, dict], burst_n: int) -> str:
    models = list(results)
    head = "| request | " + " | ".join(f"{m}: client (server)" for m in models) + " | response size |"
    lines = [head, "|---" * (len(models) + 2) + "|"]
    for label, *_ in REQUESTS:
        cells = []
        for m in models:
            client, server, _ = results[m][label]
            cells.append(f"{client * 1000:,.0f} ms" + (f" ({server * 1000:,.0f} ms)" if server is not None else ""))
        sizes = ", ".join(f"{results[m][label][2] / 1024:,.0f} KB" for m in models)
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {sizes} |")
    lines.append("")
    for m in models:
        n = results[m]["index images"]
        lines.append(
            f"{m}: the cold neighbours request built the fc7 index of {n:,} training images "
            f"(server column: the index's share of it)"
        )
    lines.append("")
    lines.append("| burst of predictions at once | " + " | ".join(models) + " |")
    lines.append("|---" * (len(models) + 1) + "|")
    for i, what in enumerate(("p50", "p99")):
        lines.append(f"| {what} | " + " | ".join(f"{results[m]['burst'][i] * 1000:,.0f} ms" for m in models) + " |")
    lines.append("| answered | " + " | ".join(f"{results[m]['burst'][2]} of {burst_n}" for m in models) + " |")
    alone = "predict, centre patch"
    lines.append(
        "| p99 / one prediction alone | "
        + " | ".join(f"{results[m]['burst'][1] / results[m][alone][0]:,.1f}x" for m in models)
        + " |"
    )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", type=Path, help="a small-model run directory (default: train one here)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--paper-train", type=int, default=64, help="training images of the paper model's folder")
    p.add_argument("--index-limit", help="training images of the small model's index: N or all")
    p.add_argument("--models", default="small,paper")
    p.add_argument("--burst", type=int, default=64, help="predictions sent at once")
    args = p.parse_args()
    tune_allocator()  # as `alexnet serve` (cli.main) does
    cpu = next(
        (line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
        platform.processor(),
    )
    print(
        f"# {cpu}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
        f"Python {platform.python_version()}"
    )
    upload = photo()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        if "small" in args.models:
            run = find_checkpoint(args.run) if args.run else small_run(Path(tmp) / "small") / "last.pt"
            ckpt = Path(tmp) / "small-copy" / run.name  # the cold requests delete its index files
            ckpt.parent.mkdir()
            shutil.copy2(run, ckpt)
            results["small"] = measure(ckpt, upload, args.repeats, args.index_limit, args.burst)
        if "paper" in args.models:
            results["paper"] = measure(
                paper_checkpoint(Path(tmp) / "paper", args.paper_train), upload, args.repeats, None, args.burst
            )
    print(table(results, args.burst))


if __name__ == "__main__":
    main()
