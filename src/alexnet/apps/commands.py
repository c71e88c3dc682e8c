"""What each `alexnet` subcommand runs: cmd_NAME(args) reads the parsed options, calls the
module that does the work and prints its result (JSON with --json).

Each command imports its module (and with it torch) when it runs, never at import time:
the parser (cli.py) imports this module to name the commands, and `alexnet --help` answers
without torch.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import TYPE_CHECKING

from ..config import DataConfig
from ..core.recipes import resolve
from ..run.errors import UserError
from ..run.jsonio import to_json, write_json
from ..run.plan import format_seconds
from .options import config_error, config_options

if TYPE_CHECKING:
    import argparse

EVAL_VIEWS = {1: "centre patch", 2: "centre patch and its mirror", 10: "10 patches"}


def _read_pca(path: str | None) -> dict:
    if path is None:
        return {}
    try:
        d = json.loads(open(path).read())
        eigval, eigvec = tuple(map(float, d["eigval"])), tuple(tuple(map(float, r)) for r in d["eigvec"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path}: not a PCA file from `alexnet pca` ({e})") from e
    if len(eigval) != 3 or len(eigvec) != 3 or any(len(r) != 3 for r in eigvec):
        raise UserError(f"{path}: needs 3 eigenvalues and a 3x3 eigenvector matrix")
    return {"pca_eigval": eigval, "pca_eigvec": eigvec}


def _print_json_or(args: argparse.Namespace, result: object, text: str) -> None:
    print(to_json(result) if args.json else text)


def _size(r: dict) -> str:
    return f"{r['size'][0]}x{r['size'][1]} px"


def cmd_train(args: argparse.Namespace) -> None:
    from ..core.train import train

    data = config_options(args, "data")
    data_name = data.pop("name", "fashion-mnist")
    train_options = config_options(args, "train")
    try:
        cfg = resolve(
            data_name,
            config_options(args, "model"),
            {**data, **_read_pca(args.pca)},
            train_options,
            recipe=args.recipe or ("finetune" if train_options.get("init_from") else None),
        )
    except ValueError as e:
        raise config_error(e) from e
    result = train(cfg)
    val = result["val"]
    if val and os.environ.get("RANK", "0") == "0":
        took = format_seconds(result["seconds"]) + (
            f" of a {format_seconds(result['budget'])} budget" if result["budget"] else ""
        )
        print(
            f"{result['status']}: validation top-1 {val['top1']:.4f} (error {val['top1_error']:.4f}), "
            f"top-5 {val['top5']:.4f} on {val['images']:,} images; trained in {took}; "
            f"checkpoint {result['checkpoint']}"
        )
        for event in result["warnings"]:  # the advice again, where the user looks last
            print(f"  warning: {event.message}")


def cmd_evaluate(args: argparse.Namespace) -> None:
    from .evaluate import evaluate_checkpoint

    r = evaluate_checkpoint(
        args.checkpoint,
        args.data,
        args.data_dir,
        args.batch_size,
        args.device,
        args.amp,
        args.limit,
        args.ten_crop,
        args.mirror,
    )
    if r is None:  # not the main torchrun process
        return
    _print_json_or(
        args,
        r,
        f"{r['checkpoint']} on {r['data']} ({r['images']:,} images, "
        f"{EVAL_VIEWS[r['patches']]}, "
        f"{r['precision'] if r['precision'] != 'off' else 'fp32'}): top-1 {r['top1']:.4f} "
        f"(error {r['top1_error']:.4f}), top-5 {r['top5']:.4f} (error {r['top5_error']:.4f})"
        + (f"; {r['unreadable']} unreadable images skipped" if r["unreadable"] else ""),
    )


def cmd_predict(args: argparse.Namespace) -> None:
    from .predict import predict_files

    results = predict_files(args.checkpoint, args.images, args.topk, args.device)
    lines = []
    for r in results:
        lines.append(r["image"])
        lines += [
            f"  {p['probability']:7.2%}  {p['name']}" + (f" ({p['class']})" if p["name"] != p["class"] else "")
            for p in r["predictions"]
        ]
    _print_json_or(args, results, "\n".join(lines))


def cmd_summary(args: argparse.Namespace) -> None:
    from ..core.model import build_model, summarize

    options = config_options(args, "model")
    name = options.pop("name", "paper")
    try:
        model = build_model(name, **options)
    except ValueError as e:
        raise config_error(e) from e
    s = summarize(model)
    lines = [f"{'layer':<16}{'type':<20}{'output':>18}{'params':>14}{'MACs':>16}"]
    for r in s["layers"]:
        shape = "x".join(str(d) for d in r["output"])
        lines.append(f"{r['name']:<16}{r['type']:<20}{shape:>18}{r['params']:>14,}{r['macs']:>16,}")
    lines.append(f"{'total':<54}{s['params']:>14,}{s['macs']:>16,}")
    _print_json_or(args, s, "\n".join(lines))


def cmd_pca(args: argparse.Namespace) -> None:
    from ..core.recipes import data_defaults
    from ..data.datasets import load_split
    from ..data.stats import rgb_pca

    cfg = dataclasses.replace(
        data_defaults(args.data), data_dir=args.data_dir, workers=args.workers, limit_train=args.limit
    )
    if cfg.channels != 3:
        raise UserError(f"{args.data}: PCA lighting needs RGB images")
    eigval, eigvec = rgb_pca(load_split(True, cfg, 64, ordered=True))
    result = {"data": args.data, "eigval": eigval, "eigvec": eigvec}
    if args.out:
        write_json(args.out, result)
    print(to_json(result))


def cmd_pack(args: argparse.Namespace) -> None:
    if args.list:
        from ..data.store import list_store

        if args.data or args.out:
            raise UserError("pack --list STORE takes no SRC or OUT")
        list_store(args.list)
        return
    if not (args.data and args.out):
        raise UserError("pack needs SRC and OUT (or --list STORE)")
    from ..data.pack import DEFAULT_QUALITY, pack

    quality = DEFAULT_QUALITY if args.quality is None else args.quality
    pack(
        args.data, args.out, args.resize, args.workers, args.limit, args.format, quality, args.val_labels, args.synsets
    )
    print(f"alexnet: train from it with --data {args.out}")


def cmd_samples(args: argparse.Namespace) -> None:
    from ..data.datasets import write_samples

    paths = write_samples(DataConfig(name=args.data, data_dir=args.data_dir), args.count, args.out)
    print("\n".join(str(p) for p in paths))


def cmd_import_torchvision(args: argparse.Namespace) -> None:
    from .interop import import_torchvision

    r = import_torchvision(args.weights, args.out, args.classes)
    print(f"{r['checkpoint']}: owt model with {r['classes']} classes from {r['weights']}")


def cmd_export(args: argparse.Namespace) -> None:
    from .interop import export_onnx

    r = export_onnx(args.checkpoint, args.onnx, args.batch_size)
    print(
        f"{r['onnx']}: input {' x '.join(str(d) for d in r['input'])} (preprocessed float), "
        f"logits for {r['classes']} classes"
    )


def cmd_experiment(args: argparse.Namespace) -> None:
    from .experiments import EXPERIMENTS, run, table

    names = list(EXPERIMENTS) if args.name == "all" else [args.name]
    trained: dict = {}  # shared by the experiments of `all`: each distinct run trained once
    reused = 0
    for name in names:
        r = run(name, args.data, args.data_dir, args.seeds, args.quick, args.out, trained=trained)
        reused += len(r["reused"])
        print(table(r))
    if len(names) > 1:
        print(
            f"alexnet experiment all: {len(trained)} runs trained, {reused} reused "
            f"(the same configuration as a run of an earlier experiment)"
        )


def cmd_filters(args: argparse.Namespace) -> None:
    from .figures import filters_command

    r = filters_command(args.checkpoint, args.out)
    grids = ", ".join(f"{g['title']}: {g['tiles']}" for g in r["grids"])
    _print_json_or(args, r, f"{r['out']}: {sum(g['tiles'] for g in r['grids'])} conv1 kernels ({grids}), {_size(r)}")


def cmd_features(args: argparse.Namespace) -> None:
    from .features import extract

    r = extract(
        args.checkpoint, args.data, args.layer, args.out, args.split, args.batch_size, args.workers, args.device
    )
    skipped = f"; skipped {len(r['unreadable'])} unreadable: " + "; ".join(r["unreadable"]) if r["unreadable"] else ""
    _print_json_or(
        args, r, f"alexnet: {r['layer']} of {r['images']:,} images ({r['dim']:,} values each) -> {r['out']}{skipped}"
    )


def cmd_neighbors(args: argparse.Namespace) -> None:
    from .figures import neighbors_command

    r = neighbors_command(
        args.checkpoint,
        args.data,
        args.data_dir,
        args.queries,
        args.k,
        args.out,
        args.limit_train,
        args.batch_size,
        args.seed,
        args.query_split,
        args.device,
    )
    lines = [
        f"{r['out']}: {len(r['queries'])} queries x {r['k']} nearest in fc7 among "
        f"{r['train_images']:,} training images, {_size(r)}"
    ]
    for q in r["queries"]:
        lines.append(f"{q['split']} #{q['index']} ({q['label']}):")
        lines += [f"  train #{n['index']:<8} {n['distance']:10.4f}  {n['label']}" for n in q["neighbors"]]
    _print_json_or(args, r, "\n".join(lines))


def cmd_plot(args: argparse.Namespace) -> None:
    from .figures import draw_curves

    r = draw_curves(args.run_dir, args.out)
    print(f"{r['out']}: {r['epochs']} epochs, {_size(r)}")


def cmd_serve(args: argparse.Namespace) -> None:
    from .serve import serve

    serve(args.target, args.host, args.port, args.device, args.max_wait)
