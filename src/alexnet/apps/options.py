"""`alexnet train`'s options, derived from the config dataclasses (config.py): one option
per field, with the field's type, its help (which cites the paper) and each recipe's
default (recipes.py). Parsed values go back to the configs through config_options, and a
value a config refuses becomes a one-line error naming the option (config_error).

No torch here (nor in what this imports): `alexnet --help` answers without it.
"""

from __future__ import annotations

import argparse
import dataclasses

from ..config import DataConfig, ModelConfig, TrainConfig
from ..core.recipes import RECIPE_DATA, RECIPES, resolve
from ..core.variants import ARCHITECTURES
from ..run.errors import UserError
from ..run.plan import format_seconds, parse_budget

SECTIONS = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig}
# option values that are not plain numbers: parsed after argparse, so that a bad one is a
# one-line UserError like any other
PARSERS = {"train.budget": parse_budget}
TYPES = {"int": int, "float": float, "str": str}
CHOICES = {"model.name": list(ARCHITECTURES)}  # the variants (variants.py), which config cannot import


class Help(argparse.HelpFormatter):
    """Shows a default only where there is one (never "(default: None)")."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "%(default)" in text or action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


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
    "paper, finetune: 0.01; fashion-mnist: 0.06" where the recipes differ."""
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


def config_error(e: ValueError) -> UserError:
    """ValueError("lr must be positive, got -1") from a config -> "--lr must be positive, got -1"."""
    name, _, rest = str(e).partition(" ")
    fields = {f.name: f for cls in SECTIONS.values() for f in dataclasses.fields(cls)}
    return UserError(f"{_flag(fields[name])} {rest}" if name in fields else str(e))
