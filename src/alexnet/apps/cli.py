"""The `alexnet` command: every subcommand's options, and what each runs.

`train`'s options are derived from the config dataclasses (config.py): one option per
field, with the field's type, its help (which cites the paper) and each recipe's default
(recipes.py); `summary` takes the model's. A bad value is refused before any work, in one
line naming the option. The work itself lives in the modules named by each command.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

from ..config import AMP_MODES, DataConfig, ModelConfig, TrainConfig
from ..core.model import ARCHITECTURES
from ..core.recipes import RECIPE_DATA, RECIPES, resolve
from ..run.errors import Stopped, UserError
from ..run.jsonio import to_json, write_json
from ..run.plan import format_seconds, parse_budget

EVAL_VIEWS = {1: "centre patch", 2: "centre patch and its mirror", 10: "10 patches"}
SECTIONS = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig}
# option values that are not plain numbers: parsed after argparse, so that a bad one is a
# one-line UserError like any other
PARSERS = {"train.budget": parse_budget}
TYPES = {"int": int, "float": float, "str": str}
CHOICES = {"model.name": list(ARCHITECTURES)}  # the variants (model.py), which config cannot import


class _Help(argparse.HelpFormatter):
    """Shows a default only where there is one (never "(default: None)")."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "%(default)" in text or action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


# ----------------------------------------------------------------------------- options from the config


def _flag(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def _show(value: object) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    return "none" if value is None else str(value)


def recipe_defaults() -> dict[str, str]:
    """`section.field` -> the default each recipe gives it, as help text: "0.9", or
    "fashion-mnist 0.06; folder, paper 0.01" where the recipes differ."""
    configs = {name: resolve(RECIPE_DATA[name], {}, {}, {}, recipe=name) for name in RECIPES}
    texts = {}
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            by_value: dict[str, list[str]] = {}
            for name, cfg in configs.items():
                value = getattr(getattr(cfg, section), f.name)
                shown = format_seconds(value) if f.name == "budget" and value else _show(value)
                if f.name == "lr" and RECIPES[name].lr_batch:
                    shown += f" x sqrt(batch / {RECIPES[name].lr_batch})"
                by_value.setdefault(shown, []).append(name)
            texts[f"{section}.{f.name}"] = (
                next(iter(by_value))
                if len(by_value) == 1
                else "; ".join(f"{', '.join(names)}: {v}" for v, names in by_value.items())
            )
    texts["data.name"] = DataConfig.name  # the recipes are compared on their own data
    return texts


def add_config_options(
    group: argparse._ArgumentGroup,
    section: str,
    defaults: dict[str, str] | None = None,
    fields: list[str] | None = None,
    only_group: str | None = None,
) -> None:
    """One option per command-line field of SECTIONS[section] (or of `fields`), dest
    "section.field", default None (not given: the recipe's); defaults: help text per field."""
    for f in dataclasses.fields(SECTIONS[section]):
        meta = f.metadata
        if (fields is None and not meta.get("cli", True)) or (fields is not None and f.name not in fields):
            continue
        if only_group is not None and meta.get("group") != only_group:
            continue
        key, kind = f"{section}.{f.name}", f.type.replace(" | None", "")
        help_text = meta.get("help", "")
        if defaults is not None and defaults[key] != "none":  # none: the help says what happens
            help_text += f" (default: {defaults[key]})"
        if key in CHOICES:
            meta = {**meta, "choices": CHOICES[key]}
        kw = {"metavar": f.name.upper(), **{k: meta[k] for k in ("choices", "metavar", "nargs", "const") if k in meta}}
        if "choices" in meta:
            kw.pop("metavar")
        if kind == "bool":
            kw["action"] = argparse.BooleanOptionalAction
        else:
            kw["type"] = str if key in PARSERS else TYPES[kind]
        group.add_argument(_flag(f), dest=key, default=None, help=help_text, **kw)


def config_options(args: argparse.Namespace, section: str) -> dict:
    """The options of `section` the user gave: {field: value}."""
    prefix = section + "."
    return {
        k[len(prefix) :]: PARSERS[k](v) if k in PARSERS else v
        for k, v in vars(args).items()
        if k.startswith(prefix) and v is not None
    }


def _config_error(e: ValueError) -> UserError:
    """ValueError("lr must be positive, got -1") from a config -> "--lr must be positive, got -1"."""
    name, _, rest = str(e).partition(" ")
    fields = {f.name: f for cls in SECTIONS.values() for f in dataclasses.fields(cls)}
    return UserError(f"{_flag(fields[name])} {rest}" if name in fields else str(e))


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


# ----------------------------------------------------------------------------- commands


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
        raise _config_error(e) from e
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
        raise _config_error(e) from e
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

    serve(args.target, args.host, args.port, args.device)


# ----------------------------------------------------------------------------- the parser


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a model",
        formatter_class=_Help,
        description="Train AlexNet. Every option defaults to the recipe's value: "
        "--recipe fashion-mnist for --data fashion-mnist, folder for an image folder.",
    )
    p.add_argument(
        "--recipe",
        choices=list(RECIPES),
        help="paper: the 2012 recipe to the letter; folder (default for image folders): "
        "paper with Caffe's init and lr x sqrt(batch/128); fashion-mnist (default for "
        "fashion-mnist): the 5-minute recipe; finetune (default with --init-from): a short "
        "run at a low lr from a trained network; README lists every departure",
    )
    defaults = recipe_defaults()
    add_config_options(p.add_argument_group("model"), "model", defaults)
    g = p.add_argument_group("data")
    add_config_options(g, "data", defaults)
    g.add_argument("--pca", metavar="FILE", help="§4.1 eigenvalues/vectors from `alexnet pca` (default: ImageNet's)")
    add_config_options(p.add_argument_group("optimisation"), "train", defaults, only_group="optimisation")
    add_config_options(p.add_argument_group("run"), "train", defaults, only_group="run")
    p.set_defaults(func=cmd_train)


def _add_inference(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="top-1/top-5 accuracy of a checkpoint", formatter_class=_Help)
    p.add_argument("checkpoint")
    p.add_argument("--data", help="default: what the checkpoint was trained on")
    p.add_argument("--data-dir")
    p.add_argument(
        "--batch-size", type=int, default=256, help="the global batch, split over torchrun's processes (as in train)"
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--amp", choices=[m for m in AMP_MODES if m != "auto"], help="default: the checkpoint's")
    p.add_argument("--limit", type=int, help="evaluate only this many images")
    p.add_argument(
        "--ten-crop",
        action="store_true",
        help="§4.1: average the softmax over the 4 corner and centre patches and their mirrors (default: centre only)",
    )
    p.add_argument(
        "--mirror",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="average the softmax of each image and its mirror (default: as the run "
        "validated; the fashion-mnist recipe does)",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="classify image files", formatter_class=_Help)
    p.add_argument("checkpoint")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("summary", help="layers, output shapes, parameters and MACs of a model", formatter_class=_Help)
    add_config_options(
        p.add_argument_group("model (defaults: the variant's)"),
        "model",
        fields=[f.name for f in dataclasses.fields(ModelConfig)],
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_summary)


def _add_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pca", help="eigenvalues/vectors of a folder's RGB covariance (§4.1)", formatter_class=_Help)
    p.add_argument("data", help="ImageNet-style folder (its train/ split is used)")
    p.add_argument("--data-dir")
    p.add_argument("--limit", type=int, help="use this many training images (a fixed random subset)")
    p.add_argument("--workers", type=int, default=-1)
    p.add_argument("--out", help="write the JSON here too (for train --pca)")
    p.set_defaults(func=cmd_pca)

    p = sub.add_parser(
        "pack",
        help="read ImageNet's downloads or an image folder once into a store (JPEG or raw shards)",
        formatter_class=_Help,
    )
    p.add_argument(
        "data",
        nargs="?",
        metavar="SRC",
        help="a folder with ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar and "
        "ILSVRC2012_devkit_t12.tar.gz as downloaded, or an ImageNet-style folder (train/ and val/)",
    )
    p.add_argument("out", nargs="?", metavar="OUT", help="the store to create (an empty or new folder)")
    p.add_argument("--list", metavar="STORE", help="print every stored image as CSV: split,index,source,class,label")
    p.add_argument("--format", choices=["jpeg", "raw"], default="jpeg", help="how each image is kept")
    p.add_argument("--quality", type=int, help="JPEG quality, 1-95 (default: 90, chosen in docs/BENCHMARKS.md)")
    p.add_argument("--resize", type=int, default=256, help="stored size (§2: 256)")
    p.add_argument("--workers", type=int, default=-1, help="decoding processes (default: one per core)")
    p.add_argument("--limit", type=int, help="pack only this many images per split (a fixed random subset)")
    p.add_argument("--val-labels", help="a flat val/ folder's ground truth (see train --val-labels)")
    p.add_argument("--synsets", help="the synset order of --val-labels (see train --synsets)")
    p.set_defaults(func=cmd_pack)

    p = sub.add_parser("samples", help="write Fashion-MNIST test images as PNG files", formatter_class=_Help)
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--data-dir")
    p.add_argument("--count", type=int, default=8)
    p.add_argument("--out", default="samples")
    p.set_defaults(func=cmd_samples)


def _add_interop(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("import-torchvision", help="turn torchvision AlexNet weights into a checkpoint")
    p.add_argument("weights", metavar="WEIGHTS", help="a torchvision AlexNet state dict, e.g. alexnet-owt-7be5be79.pth")
    p.add_argument("out", metavar="OUT", help="the alexnet checkpoint to write (.pt)")
    p.add_argument(
        "--classes",
        metavar="FILE",
        help="class names, one per line (default: torchvision's ImageNet names for 1000 classes)",
    )
    p.set_defaults(func=cmd_import_torchvision)

    p = sub.add_parser("export", help="export a checkpoint's model to ONNX", formatter_class=_Help)
    p.add_argument("checkpoint")
    p.add_argument("--onnx", required=True, metavar="FILE", help="the .onnx file to write")
    p.add_argument(
        "--batch-size", type=int, default=1, help="batch of the example input (the batch axis stays dynamic)"
    )
    p.set_defaults(func=cmd_export)


def _add_studies(sub: argparse._SubParsersAction) -> None:
    from .experiments import EXPERIMENTS, FULL, QUICK

    p = sub.add_parser("experiment", help="the paper's ablations: " + ", ".join(EXPERIMENTS), formatter_class=_Help)
    p.add_argument("name", choices=[*EXPERIMENTS, "all"])
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--data-dir")
    p.add_argument("--seeds", type=int, help=f"default {FULL.seeds} ({QUICK.seeds} with --quick)")
    p.add_argument("--quick", action="store_true", help="a minute or two each, for tests")
    p.add_argument("--out", default="experiments")
    p.set_defaults(func=cmd_experiment)

    p = sub.add_parser("filters", help="conv1 kernels as a PNG grid (Figure 3)")
    p.add_argument("checkpoint")
    p.add_argument("--out", metavar="PNG", help="default: conv1_filters.png beside the checkpoint")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_filters)

    p = sub.add_parser(
        "neighbors", help="training images nearest to test images in fc7 (Figure 4)", formatter_class=_Help
    )
    p.add_argument("checkpoint")
    p.add_argument("--data", help="default: what the checkpoint was trained on")
    p.add_argument("--data-dir", help="Fashion-MNIST's folder (default: the checkpoint's)")
    p.add_argument("--queries", type=int, default=5, help="number of query images")
    p.add_argument("--k", type=int, default=6, help="neighbours per query")
    p.add_argument(
        "--query-split",
        choices=["val", "train"],
        default="val",
        help="draw the queries from the validation/test split or the training split",
    )
    p.add_argument("--seed", type=int, default=0, help="chooses the query images")
    p.add_argument(
        "--limit-train", type=int, help="search only the first N training images (image folders: a fixed random subset)"
    )
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", metavar="PNG", help="default: neighbors.png beside the checkpoint")
    p.add_argument("--json", action="store_true", help="print the neighbours as JSON")
    p.set_defaults(func=cmd_neighbors)

    p = sub.add_parser(
        "features",
        help="a layer's activations for every image of a folder, to a safetensors file",
        formatter_class=_Help,
    )
    p.add_argument("checkpoint")
    p.add_argument("data", help="an image folder: DATA/<class>/* or DATA/train/<class>/* (see --split)")
    p.add_argument("--layer", default="fc7", help="conv1..conv5, fc6, fc7 or fc8 (the logits)")
    p.add_argument("--out", default="features.safetensors", help="tensors features (N x D) and labels (N)")
    p.add_argument("--split", default="train", help="for DATA/<split>/<class>/*")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=-1, help="decoding processes (default: one per core, less one)")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_features)

    p = sub.add_parser("plot", help="loss, accuracy and learning-rate curves of a run")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory with metrics.csv")
    p.add_argument("--out", metavar="PNG", help="default: RUN_DIR/curves.png")
    p.set_defaults(func=cmd_plot)


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="a local web page and JSON API to look inside a checkpoint",
        formatter_class=_Help,
        description="Serve a page (and the JSON API behind it, README: Look inside) showing a checkpoint's "
        "predictions, activations, occlusion maps, nearest training images in fc7 and conv1 filters. "
        "Runs until Ctrl-C.",
    )
    p.add_argument("target", metavar="RUN_OR_CHECKPOINT", help="a run directory (its last.pt) or a checkpoint file")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on; anything but a loopback address lets other machines in (no authentication)",
    )
    p.add_argument("--port", type=int, default=8000, help="0: a free port (the printed URL says which)")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_serve)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="alexnet",
        description="AlexNet (Krizhevsky et al., 2012): train, evaluate and predict; the paper's network by default.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_train, _add_inference, _add_data, _add_interop, _add_studies, _add_serve):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ..run.runtime import tune_allocator

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
