"""The `alexnet` command: train, evaluate, predict, summary, import-torchvision, export."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

from .config import ACTIVATIONS, INITS, POOLINGS
from .engine import AMP_CHOICES, AMP_DTYPES
from .errors import UserError
from .plan import format_seconds, parse_budget
from .presets import RECIPES
from .jsonio import to_json, write_json
from .train import Stopped

SCHEDULES = ("plateau", "step", "onecycle")
EVAL_VIEWS = {1: "centre patch", 2: "centre patch and its mirror", 10: "10 patches"}


def _add_model_options(p: argparse.ArgumentParser) -> None:
    from .model import ARCHITECTURES

    g = p.add_argument_group("model (defaults: the variant's; see `alexnet summary`)")
    g.add_argument("--model", choices=list(ARCHITECTURES), help="variant (default: small for "
                   "fashion-mnist, paper for image folders)")
    g.add_argument("--input-size", type=int, help="input height and width in pixels")
    g.add_argument("--width", type=float, help="multiplier on every layer's width")
    g.add_argument("--activation", choices=ACTIVATIONS)
    g.add_argument("--lrn", action=argparse.BooleanOptionalAction, default=None,
                   help="local response normalisation after conv1 and conv2 (§3.3)")
    g.add_argument("--groups", action=argparse.BooleanOptionalAction, default=None,
                   help="two towers in conv2/4/5 (§3.2); --no-groups: one tower")
    g.add_argument("--pooling", choices=POOLINGS, help="overlap = 3/2 (§3.4), nonoverlap = 2/2")
    g.add_argument("--dropout", type=float, help="dropout probability in fc6 and fc7 (§4.2)")
    g.add_argument("--init", choices=INITS, help="weight init (paper: §5)")


def _model_options(args) -> dict:
    return {"name": args.model, "input_size": args.input_size, "width": args.width,
            "activation": args.activation, "lrn": args.lrn, "groups": args.groups, "pooling": args.pooling,
            "dropout": args.dropout, "init": args.init}


def _print_json_or(args, result, text: str) -> None:
    print(to_json(result) if args.json else text)


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


def cmd_train(args) -> None:
    from .presets import resolve
    from .train import train

    cfg = resolve(
        args.data, _model_options(args),
        {"data_dir": args.data_dir, "download": args.download or None, "workers": args.workers,
         "augment": args.augment, "translate": args.translate, "resize": args.resize,
         "mean_image": args.mean_image, "lighting": args.lighting, **_read_pca(args.pca),
         "val_labels": args.val_labels, "synsets": args.synsets},
        {"epochs": args.epochs, "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
         "momentum": args.momentum, "weight_decay": args.weight_decay, "schedule": args.schedule,
         "step_epochs": args.step_epochs, "warmup_epochs": args.warmup_epochs,
         "plateau_patience": args.plateau_patience, "momentum_rule": args.momentum_rule,
         "label_smoothing": args.label_smoothing, "amp": args.amp,
         "budget": parse_budget(args.budget) if args.budget is not None else None,
         "val_every": args.val_every, "flat_steps": args.flat_steps,
         "channels_last": args.channels_last, "compile": args.compile, "device": args.device,
         "seed": args.seed,
         "out": args.out},
        recipe=args.recipe)
    result = train(cfg, resume=args.resume, limit_train=args.limit_train, limit_val=args.limit_val,
                   strict=args.strict, ddp_bf16=args.ddp_bf16)
    val = result["val"]
    if val and os.environ.get("RANK", "0") == "0":
        took = format_seconds(result["seconds"]) + (f" of a {format_seconds(result['budget'])} budget"
                                                    if result["budget"] else "")
        print(f"{result['status']}: validation top-1 {val['top1']:.4f} (error {val['top1_error']:.4f}), "
              f"top-5 {val['top5']:.4f} on {val['images']:,} images; trained in {took}; "
              f"checkpoint {result['checkpoint']}")
        for event in result["warnings"]:  # the advice again, where the user looks last
            print(f"  warning: {event.message}")


def cmd_evaluate(args) -> None:
    from .evaluate import evaluate_checkpoint

    r = evaluate_checkpoint(args.checkpoint, args.data, args.data_dir, args.batch_size,
                            args.device, args.amp, args.limit, args.ten_crop, args.mirror)
    if r is None:  # not the main torchrun process
        return
    _print_json_or(args, r, f"{r['checkpoint']} on {r['data']} ({r['images']:,} images, "
                   f"{EVAL_VIEWS[r['patches']]}, "
                   f"{r['precision'] if r['precision'] != 'off' else 'fp32'}): top-1 {r['top1']:.4f} "
                   f"(error {r['top1_error']:.4f}), top-5 {r['top5']:.4f} (error {r['top5_error']:.4f})"
                   + (f"; {r['unreadable']} unreadable images skipped" if r["unreadable"] else ""))


def cmd_predict(args) -> None:
    from .predict import predict

    results = predict(args.checkpoint, args.images, args.topk, args.device)
    lines = []
    for r in results:
        lines.append(r["image"])
        lines += [f"  {p['probability']:7.2%}  {p['name']}"
                  + (f" ({p['class']})" if p["name"] != p["class"] else "") for p in r["predictions"]]
    _print_json_or(args, results, "\n".join(lines))


def cmd_summary(args) -> None:
    from .model import build_model, summarize

    options = {k: v for k, v in _model_options(args).items() if v is not None and k != "name"}
    options.update({k: v for k, v in (("in_channels", args.in_channels),
                                      ("num_classes", args.num_classes)) if v is not None})
    try:
        model = build_model(args.model or "paper", **options)
    except ValueError as e:
        raise UserError(str(e)) from e
    s = summarize(model)
    lines = [f"{'layer':<16}{'type':<20}{'output':>18}{'params':>14}{'MACs':>16}"]
    for r in s["layers"]:
        shape = "x".join(str(d) for d in r["output"])
        lines.append(f"{r['name']:<16}{r['type']:<20}{shape:>18}{r['params']:>14,}{r['macs']:>16,}")
    lines.append(f"{'total':<54}{s['params']:>14,}{s['macs']:>16,}")
    _print_json_or(args, s, "\n".join(lines))


def cmd_pca(args) -> None:
    from .presets import data_defaults
    from .data import load_split
    from .stats import rgb_pca

    cfg = dataclasses.replace(data_defaults(args.data), data_dir=args.data_dir, workers=args.workers)
    if cfg.channels != 3:
        raise UserError(f"{args.data}: PCA lighting needs RGB images")
    eigval, eigvec = rgb_pca(load_split(True, cfg, 64, limit=args.limit, ordered=True))
    result = {"data": args.data, "eigval": eigval, "eigvec": eigvec}
    if args.out:
        write_json(args.out, result)
    print(to_json(result))


def cmd_pack(args) -> None:
    from .pack import pack

    pack(args.data, args.out, args.resize, args.workers, args.limit)
    print(f"alexnet: train from it with --data {args.out}")


def cmd_samples(args) -> None:
    from .config import DataConfig
    from .data import write_samples

    paths = write_samples(DataConfig(name=args.data, data_dir=args.data_dir), args.count, args.out)
    print("\n".join(str(p) for p in paths))


def cmd_import_torchvision(args) -> None:
    from .interop import import_torchvision

    r = import_torchvision(args.weights, args.out, args.classes)
    print(f"{r['checkpoint']}: owt model with {r['classes']} classes from {r['weights']}")


def cmd_export(args) -> None:
    from .interop import export_onnx

    r = export_onnx(args.checkpoint, args.onnx, args.batch_size)
    print(f"{r['onnx']}: input {' x '.join(str(d) for d in r['input'])} (preprocessed float), "
          f"logits for {r['classes']} classes")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alexnet", description="AlexNet (Krizhevsky et al., 2012): "
                                     "train, evaluate and predict; the paper's network by default.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _add_model_options(p)
    p.add_argument("--recipe", choices=list(RECIPES),
                   help="paper: the 2012 recipe to the letter; folder (default for image "
                   "folders): paper with Caffe's init and lr x sqrt(batch/128); fashion-mnist: "
                   "the 5-minute recipe (default for fashion-mnist); see presets.py")
    g = p.add_argument_group("data")
    g.add_argument("--data", default="fashion-mnist",
                   help="fashion-mnist, or an ImageNet-style folder with train/<class>/ and val/<class>/")
    g.add_argument("--resize", type=int, help="shorter side, then the central square (§2: 256)")
    g.add_argument("--mean-image", action=argparse.BooleanOptionalAction, default=None,
                   help="subtract the training set's per-pixel mean image (§2); "
                   "--no-mean-image: the per-channel mean")
    g.add_argument("--lighting", type=float, help="PCA lighting alpha std (§4.1: 0.1; 0 = off)")
    g.add_argument("--pca", metavar="FILE", help="eigenvalues/vectors from `alexnet pca` "
                   "(default: ImageNet's)")
    g.add_argument("--val-labels", metavar="FILE", help="ground truth of a flat val/ folder: "
                   "LOC_val_solution.csv or ILSVRC2012_validation_ground_truth.txt")
    g.add_argument("--synsets", metavar="FILE", help="synset order for the devkit ground truth: "
                   "meta.mat or one wnid per line in ILSVRC2012_ID order")
    g.add_argument("--data-dir", help="folder with Fashion-MNIST's IDX files (default: Debian's)")
    g.add_argument("--download", action="store_true", help="let torchvision download Fashion-MNIST")
    g.add_argument("--workers", type=int, help="DataLoader workers for folders (default: cores - 1)")
    g.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                   help="random crops and mirrors (§4.1)")
    g.add_argument("--translate", type=int, help="in-memory data: random shifts of up to N pixels")
    g.add_argument("--limit-train", type=int, help="use only this many training images")
    g.add_argument("--limit-val", type=int, help="use only this many validation images")
    g = p.add_argument_group("optimisation (defaults: the data's preset, see presets.py)")
    g.add_argument("--epochs", type=int, help="train this many epochs (wins over a budget; with a "
                   "budget: the most it may plan)")
    g.add_argument("--steps", type=int, metavar="S", help="stop after S optimizer steps in all, the "
                   "last epoch early (what a budget plans; with --epochs to repeat a budgeted run)")
    g.add_argument("--budget", metavar="TIME", help="train for this long on this machine, e.g. 300s, "
                   "5m, 1.5h: the steps that fit are measured before the first step and revised "
                   "after each epoch at the run's pace (fashion-mnist recipe: 5m)")
    g.add_argument("--batch-size", type=int)
    g.add_argument("--lr", type=float)
    g.add_argument("--momentum", type=float)
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--schedule", choices=SCHEDULES)
    g.add_argument("--step-epochs", type=int, help="epochs between /10 drops (--schedule step)")
    g.add_argument("--warmup-epochs", type=float, help="warm-up length (--schedule onecycle)")
    g.add_argument("--plateau-patience", type=int, help="epochs without improvement before a "
                   "drop (--schedule plateau)")
    g.add_argument("--momentum-rule", choices=["paper", "pytorch"],
                   help="momentum across lr drops: §5's (velocity) or torch.optim.SGD's")
    g.add_argument("--label-smoothing", type=float)
    g.add_argument("--val-every", type=int, metavar="N", help="validate every N epochs and after the "
                   "last; 0: after the last only (fashion-mnist recipe: 0)")
    g = p.add_argument_group("run")
    g.add_argument("--amp", choices=list(AMP_CHOICES), help="autocast precision: off = fp32; auto = "
                   "bf16 on CUDA cards that have it (else fp16), on a CPU the faster of fp32 and bf16, "
                   "measured at the start (the paper recipe: off)")
    g.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None)
    g.add_argument("--compile", action="store_true", default=None,
                   help="torch.compile the model (for GPUs: on a CPU it trained slower than eager, "
                        "docs/BENCHMARKS.md)")
    g.add_argument("--device", help="auto (CUDA, else Apple MPS, else CPU), cpu, cuda, cuda:N or mps")
    g.add_argument("--seed", type=int)
    g.add_argument("--flat-steps", type=int, metavar="N", help="warn if the training loss is still at "
                   "chance level (ln C) after N steps (default: 300; docs/RELIABILITY.md)")
    g.add_argument("--out", help="run directory: config.json, metrics.csv, checkpoints")
    g.add_argument("--resume", metavar="CKPT", nargs="?", const="auto",
                   help="continue from this checkpoint (no value: OUT/last.pt)")
    g.add_argument("--strict", action="store_true",
                   help="stop at the first unreadable training file (default: skip and list them)")
    g.add_argument("--ddp-bf16", action="store_true",
                   help="under torchrun: compress the gradient all-reduce to bf16 (docs/SCALING.md)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="top-1/top-5 accuracy of a checkpoint")
    p.add_argument("checkpoint")
    p.add_argument("--data", help="default: what the checkpoint was trained on")
    p.add_argument("--data-dir")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="auto")
    p.add_argument("--amp", choices=list(AMP_DTYPES), help="default: the checkpoint's")
    p.add_argument("--limit", type=int, help="evaluate only this many images")
    p.add_argument("--ten-crop", action="store_true", help="§4.1: average the softmax over the "
                   "4 corner and centre patches and their mirrors (default: centre only)")
    p.add_argument("--mirror", action=argparse.BooleanOptionalAction, default=None,
                   help="average the softmax of each image and its mirror (default: as the run "
                   "validated; the fashion-mnist recipe does)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="classify image files")
    p.add_argument("checkpoint")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("summary", help="layers, output shapes, parameters and MACs of a model")
    _add_model_options(p)
    p.add_argument("--in-channels", type=int)
    p.add_argument("--num-classes", type=int)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_summary)

    p = sub.add_parser("pca", help="eigenvalues/vectors of a folder's RGB covariance (§4.1)")
    p.add_argument("data", help="ImageNet-style folder (its train/ split is used)")
    p.add_argument("--data-dir")
    p.add_argument("--limit", type=int, help="use this many training images (a fixed random subset)")
    p.add_argument("--workers", type=int, default=-1)
    p.add_argument("--out", help="write the JSON here too (for train --pca)")
    p.set_defaults(func=cmd_pca)

    p = sub.add_parser("pack", help="decode an image folder once into a memory-mapped store")
    p.add_argument("data", help="ImageNet-style folder (train/ and val/)")
    p.add_argument("out", help="the store to create (an empty or new folder)")
    p.add_argument("--resize", type=int, default=256, help="stored size (§2: 256)")
    p.add_argument("--workers", type=int, default=-1)
    p.add_argument("--limit", type=int, help="pack only this many images per split")
    p.set_defaults(func=cmd_pack)

    p = sub.add_parser("samples", help="write Fashion-MNIST test images as PNG files")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--data-dir")
    p.add_argument("--count", type=int, default=8)
    p.add_argument("--out", default="samples")
    p.set_defaults(func=cmd_samples)

    p = sub.add_parser("import-torchvision", help="turn torchvision AlexNet weights into a checkpoint")
    p.add_argument("weights", metavar="WEIGHTS", help="a torchvision AlexNet state dict, e.g. "
                   "alexnet-owt-7be5be79.pth")
    p.add_argument("out", metavar="OUT", help="the alexnet checkpoint to write (.pt)")
    p.add_argument("--classes", metavar="FILE", help="class names, one per line (default: "
                   "torchvision's ImageNet names for 1000 classes)")
    p.set_defaults(func=cmd_import_torchvision)

    p = sub.add_parser("export", help="export a checkpoint's model to ONNX")
    p.add_argument("checkpoint")
    p.add_argument("--onnx", required=True, metavar="FILE", help="the .onnx file to write")
    p.add_argument("--batch-size", type=int, default=1,
                   help="batch of the example input (the batch axis stays dynamic)")
    p.set_defaults(func=cmd_export)

    from .experiments import add_command as add_experiment

    add_experiment(sub)
    from . import figures  # filters, neighbors, plot: the paper's Figures 3 and 4, curves
    figures.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .runtime import tune_allocator

    tune_allocator()
    try:
        args.func(args)
    except UserError as e:
        print(f"alexnet: error: {e}", file=sys.stderr)
        return 2
    except Stopped as e:
        print(f"alexnet: {e}", file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt:
        print("alexnet: interrupted", file=sys.stderr)
        return 130
    return 0
