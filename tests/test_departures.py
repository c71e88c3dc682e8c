"""README's list of the recipes' departures from the paper is generated from the recipes
(recipes.py), and every departure carries its reason."""

import dataclasses
import sys
from pathlib import Path

import pytest

from alexnet.config import TrainConfig
from alexnet.core import recipes
from alexnet.core.recipes import RECIPES, Recipe, departures, differences, reason_problems

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import departures as tool  # noqa: E402  (tools/departures.py: the README generator)

departures_markdown, readme_block, update_readme = tool.departures_markdown, tool.readme_block, tool.update_readme

README = Path(__file__).resolve().parents[1] / "README.md"
REGENERATE = "python tools/departures.py --readme README.md"


def test_readme_lists_the_departures_the_recipes_define():
    assert readme_block(README.read_text()) == departures_markdown(), (
        f"README.md's departures are out of date with src/alexnet/core/recipes.py: run `{REGENERATE}`"
    )


@pytest.mark.parametrize("name", list(RECIPES))
def test_every_departure_has_a_reason_and_every_reason_a_departure(name):
    assert reason_problems(name) == []
    assert all(why.strip() for _, _, _, why in departures(name))


def test_the_paper_recipe_has_no_departures():
    assert differences("paper") == [] and RECIPES["paper"].why == {}


def test_the_known_departures_are_found():
    assert {k for k, _, _ in differences("folder")} == {
        "model.init",
        "lr_batch",
        "train.amp",
        "train.tf32",
        "train.plateau_min_steps",
    }
    assert {k for k, _, _ in differences("finetune")} >= {"train.batch_size", "train.schedule", "train.epochs"}
    fashion = {k: (p, v) for k, p, v in differences("fashion-mnist")}
    assert fashion["model.init"] == ("paper", "kaiming") and fashion["train.lr"] == (0.01, 0.06)
    assert fashion["data.std"] == ((1.0,), (90.02,))
    # what the data alone decides is the same on both sides, and bookkeeping is no departure
    assert not {"data.name", "data.resize", "data.mean", "train.out", "model.in_channels"} & set(fashion)


def test_a_new_departure_without_a_reason_fails_and_so_does_a_stale_reason(monkeypatch):
    r = RECIPES["folder"]
    slower = dataclasses.replace(r.train, momentum=0.8)
    monkeypatch.setitem(RECIPES, "folder", dataclasses.replace(r, train=slower))
    assert reason_problems("folder") == [
        "folder: train.momentum differs from the paper recipe but has no reason in Recipe.why"
    ]
    with pytest.raises(ValueError, match="train.momentum"):
        departures_markdown()
    monkeypatch.setitem(RECIPES, "folder", dataclasses.replace(r, why={**r.why, "train.seed": "a reason"}))
    assert reason_problems("folder") == [
        "folder: Recipe.why gives a reason for train.seed, which does not differ from the paper recipe"
    ]


def test_a_new_recipe_is_compared_too(monkeypatch):
    monkeypatch.setitem(
        RECIPES,
        "quick",
        Recipe(
            {"name": "paper"},
            TrainConfig(amp="off", epochs=2),
            {"mean_image": True, "lighting": 0.1, "translate": 0},
            pixel_scale=True,
            why={"train.epochs": "a smoke test"},
        ),
    )
    monkeypatch.setitem(recipes.RECIPE_DATA, "quick", "photos")
    assert departures("quick") == [("train.epochs", 90, 2, "a smoke test")]
    assert "| `train.epochs` | 90 | 2 | a smoke test |" in departures_markdown()


def test_the_command_rewrites_only_the_block(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# title\n\nbefore\n<!-- departures:begin -->\nstale\n<!-- departures:end -->\nafter\n")
    assert tool.main(["--readme", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith("# title\n\nbefore\n<!-- departures:begin -->\n")
    assert text.endswith("<!-- departures:end -->\nafter\n") and "stale" not in text
    assert readme_block(text) == departures_markdown()
    assert update_readme(readme) is False  # already up to date
    readme.write_text("no markers\n")
    with pytest.raises(ValueError, match="departures:begin"):
        update_readme(readme)
