"""The `alexnet` command: every subcommand's options, parsed before anything heavy is
imported.

`train`'s options come from the config dataclasses (options.py); `summary` takes the
model's. A bad value is refused before any work, in one line naming the option. What each
command runs is in commands.py, which imports torch only when a command runs, so that
`alexnet --help` and `alexnet COMMAND --help` answer without it (tests/test_cli.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from ..config import AMP_MODES, ModelConfig
from ..core.recipes import RECIPES
from ..run.errors import Stopped, UserError
from . import commands
from .admission import MAX_WAIT
from .options import Help, add_config_options, recipe_defaults


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a model",
        formatter_class=Help,
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
    p.set_defaults(func=commands.cmd_train)


def _add_inference(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="top-1/top-5 accuracy of a checkpoint", formatter_class=Help)
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
    p.set_defaults(func=commands.cmd_evaluate)

    p = sub.add_parser("predict", help="classify image files", formatter_class=Help)
    p.add_argument("checkpoint")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=commands.cmd_predict)

    p = sub.add_parser("summary", help="layers, output shapes, parameters and MACs of a model", formatter_class=Help)
    add_config_options(
        p.add_argument_group("model (defaults: the variant's)"),
        "model",
        fields=[f.name for f in dataclasses.fields(ModelConfig)],
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=commands.cmd_summary)


def _add_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pca", help="eigenvalues/vectors of a folder's RGB covariance (§4.1)", formatter_class=Help)
    p.add_argument("data", help="ImageNet-style folder (its train/ split is used)")
    p.add_argument("--data-dir")
    p.add_argument("--limit", type=int, help="use this many training images (a fixed random subset)")
    p.add_argument("--workers", type=int, default=-1)
    p.add_argument("--out", help="write the JSON here too (for train --pca)")
    p.set_defaults(func=commands.cmd_pca)

    p = sub.add_parser(
        "pack",
        help="read ImageNet's downloads or an image folder once into a store (JPEG or raw shards)",
        formatter_class=Help,
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
    p.set_defaults(func=commands.cmd_pack)

    p = sub.add_parser("samples", help="write Fashion-MNIST test images as PNG files", formatter_class=Help)
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--data-dir")
    p.add_argument("--count", type=int, default=8)
    p.add_argument("--out", default="samples")
    p.set_defaults(func=commands.cmd_samples)


def _add_interop(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("import-torchvision", help="turn torchvision AlexNet weights into a checkpoint")
    p.add_argument("weights", metavar="WEIGHTS", help="a torchvision AlexNet state dict, e.g. alexnet-owt-7be5be79.pth")
    p.add_argument("out", metavar="OUT", help="the alexnet checkpoint to write (.pt)")
    p.add_argument(
        "--classes",
        metavar="FILE",
        help="class names, one per line (default: torchvision's ImageNet names for 1000 classes)",
    )
    p.set_defaults(func=commands.cmd_import_torchvision)

    p = sub.add_parser("export", help="export a checkpoint's model to ONNX", formatter_class=Help)
    p.add_argument("checkpoint")
    p.add_argument("--onnx", required=True, metavar="FILE", help="the .onnx file to write")
    p.add_argument(
        "--batch-size", type=int, default=1, help="batch of the example input (the batch axis stays dynamic)"
    )
    p.set_defaults(func=commands.cmd_export)


def _add_studies(sub: argparse._SubParsersAction) -> None:
    from .experiments import EXPERIMENTS, FULL, QUICK

    p = sub.add_parser("experiment", help="the paper's ablations: " + ", ".join(EXPERIMENTS), formatter_class=Help)
    p.add_argument("name", choices=[*EXPERIMENTS, "all"])
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--data-dir")
    p.add_argument("--seeds", type=int, help=f"default {FULL.seeds} ({QUICK.seeds} with --quick)")
    p.add_argument("--quick", action="store_true", help="a minute or two each, for tests")
    p.add_argument("--out", default="experiments")
    p.set_defaults(func=commands.cmd_experiment)

    p = sub.add_parser("filters", help="conv1 kernels as a PNG grid (Figure 3)")
    p.add_argument("checkpoint")
    p.add_argument("--out", metavar="PNG", help="default: conv1_filters.png beside the checkpoint")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=commands.cmd_filters)

    p = sub.add_parser(
        "neighbors", help="training images nearest to test images in fc7 (Figure 4)", formatter_class=Help
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
    p.set_defaults(func=commands.cmd_neighbors)

    p = sub.add_parser(
        "features",
        help="a layer's activations for every image of a folder, to a safetensors file",
        formatter_class=Help,
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
    p.set_defaults(func=commands.cmd_features)

    p = sub.add_parser("plot", help="loss, accuracy and learning-rate curves of a run")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory with metrics.csv")
    p.add_argument("--out", metavar="PNG", help="default: RUN_DIR/curves.png")
    p.set_defaults(func=commands.cmd_plot)


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="a local web page and JSON API to look inside a checkpoint",
        formatter_class=Help,
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
    p.add_argument(
        "--max-wait",
        type=float,
        default=MAX_WAIT,
        metavar="SECONDS",
        help="the longest a request may be expected to wait for the model; a longer wait is answered 503 "
        "with Retry-After (README: The JSON API)",
    )
    p.set_defaults(func=commands.cmd_serve)


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
