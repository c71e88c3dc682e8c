"""README's list of the recipes' departures from the paper, generated from the recipes
(src/alexnet/core/recipes.py: each departure and its `Recipe.why`). A developer's tool, not
part of the package: `python tools/departures.py --readme README.md` rewrites the block
between README's departure markers; tests/test_departures.py fails when they differ."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from alexnet.core.recipes import RECIPES, departures, reason_problems


def _show(field: str, value: object) -> str:
    if field == "lr_batch":
        return "the lr at any batch" if value is None else f"lr x sqrt(batch / {value})"
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return ", ".join(_show(field, v) for v in value)
    return str(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


_HEADINGS = {
    "folder": "`--recipe folder`, the default for an image folder, against `--recipe paper` on the same folder",
    "fashion-mnist": "`--recipe fashion-mnist`, the default for Fashion-MNIST, against `--recipe paper` "
    "on Fashion-MNIST",
    "finetune": "`--recipe finetune`, the default with `--init-from CKPT` (whose network and preprocessing "
    "it takes), against `--recipe paper`",
}


def departures_markdown() -> str:
    """README's list of the recipes' departures from the paper recipe (the text between
    its `<!-- departures:begin -->` and `<!-- departures:end -->` lines)."""
    problems = [p for name in RECIPES for p in reason_problems(name)]
    if problems:
        raise ValueError("; ".join(problems))
    lines = [
        "<!-- generated from src/alexnet/core/recipes.py by `python tools/departures.py --readme README.md`: "
        "edit the recipes' `why` there, not this list -->"
    ]
    for name in RECIPES:
        rows = departures(name)
        if not rows:
            continue
        lines += [
            "",
            f"{_HEADINGS.get(name, f'`--recipe {name}` against `--recipe paper`')}:",
            "",
            f"| setting | `paper` recipe | `{name}` | why |",
            "|---|---|---|---|",
        ]
        lines += [f"| `{k}` | {_cell(_show(k, p))} | {_cell(_show(k, v))} | {_cell(why)} |" for k, p, v, why in rows]
    return "\n".join(lines) + "\n"


BEGIN, END = "<!-- departures:begin -->", "<!-- departures:end -->"


def readme_block(text: str) -> str:
    """The text between README's departure markers (their own lines excluded)."""
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise ValueError(f"expected one {BEGIN} line followed by one {END} line")
    return text[text.index(BEGIN) + len(BEGIN) : text.index(END)].removeprefix("\n")


def update_readme(path: str | Path) -> bool:
    """Rewrite the departures block of the README at `path`; True if it changed."""
    path = Path(path)
    text = path.read_text()
    old = readme_block(text)
    new = departures_markdown()
    if old == new:
        return False
    head, tail = text[: text.index(BEGIN) + len(BEGIN)], text[text.index(END) :]
    path.write_text(f"{head}\n{new}{tail}")
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python tools/departures.py", description="Print the recipes' departures from the paper (markdown)."
    )
    p.add_argument("--readme", metavar="FILE", help="rewrite the block between the departure markers in FILE")
    args = p.parse_args(argv)
    if args.readme is None:
        sys.stdout.write(departures_markdown())
        return 0
    changed = update_readme(args.readme)
    print(f"{args.readme}: departures {'rewritten' if changed else 'already up to date'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
