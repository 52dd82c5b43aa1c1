"""trainer.prompt_tuning: a soft prompt trained on one dataset with the model frozen, full and 32-example settings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import trainer_fixtures as fx
from rich.console import Console

from flanpipe.errors import OutputError, SpecError
from trainer import prompt_tuning
from trainer.prompt_tuning import prompt_tune

STEPS = ["prompt_tuning.steps=40"]


@pytest.fixture(scope="module")
def train_rows(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fx.color_train_rows(tmp_path_factory.mktemp("pt") / "colors_train.parquet")


def test_low_resource_prompt_tuning_trains_only_the_prompt(
    tmp_path_factory: pytest.TempPathFactory, train_rows: Path, tmp_path: Path
) -> None:
    split, model_dir, _ = fx.shared_run(tmp_path_factory)
    checkpoint_files = {p: p.stat().st_mtime_ns for p in (model_dir / "checkpoints").rglob("*") if p.is_file()}
    result = prompt_tune(split, fx.TINY_CONFIG, model_dir, dataset="colors", workdir=tmp_path, train_file=train_rows,
                         low_resource_setting=True, overrides=STEPS, progress=False, console=Console(quiet=True))
    assert result.examples == 32
    assert result.losses[40] < 0.5 * result.losses[1]
    assert np.load(result.prompt_file).shape == (10, 64)
    colors = result.results["zero_shot"]["colors"]
    assert set(result.results) >= {"zero_shot", "few_shot", "prompt_tuning"} and colors["rows"] == 72
    assert result.results["prompt_tuning"] == {"dataset": "colors", "examples": 32, "low_resource": True,
                                               "prompt_length": 10, "weight_decay": 1e-4}
    assert (tmp_path / "eval" / "prompt_tuning.json").exists()
    # The model is frozen: nothing in its checkpoints changed.
    assert {p: p.stat().st_mtime_ns for p in checkpoint_files} == checkpoint_files


def test_full_setting_uses_every_row(
    tmp_path_factory: pytest.TempPathFactory, train_rows: Path, tmp_path: Path
) -> None:
    split, model_dir, _ = fx.shared_run(tmp_path_factory)
    result = prompt_tune(split, fx.TINY_CONFIG, model_dir, dataset="colors", workdir=tmp_path, train_file=train_rows,
                         overrides=["prompt_tuning.steps=2"], progress=False, console=Console(quiet=True))
    assert result.examples == 36 and sorted(result.losses) == [1, 2]


def test_low_resource_selection_is_deterministic_and_distinct() -> None:
    rows = [{"inputs": f"x{i}", "targets": "y", "example_key": str(i % 40)} for i in range(80)]
    chosen = prompt_tuning.low_resource(rows, 32, seed=3)
    assert chosen == prompt_tuning.low_resource(rows, 32, seed=3) != prompt_tuning.low_resource(rows, 32, seed=4)
    assert len({r["example_key"] for r in chosen}) == 32
    with pytest.raises(OutputError, match="needs 32 distinct examples"):
        prompt_tuning.low_resource(rows[:10], 32, seed=0)


def test_refusals(tmp_path_factory: pytest.TempPathFactory, train_rows: Path, tmp_path: Path) -> None:
    split, model_dir, _ = fx.shared_run(tmp_path_factory)
    with pytest.raises(SpecError, match=r"no eval set 'colour' to prompt-tune on \(did you mean 'colors'\?\)"):
        prompt_tune(split, fx.TINY_CONFIG, model_dir, dataset="colour", workdir=tmp_path, progress=False)
    with pytest.raises(OutputError, match=r"no prompt_tuning.colors.file; pass train_file"):
        prompt_tune(split, fx.TINY_CONFIG, model_dir, dataset="colors", workdir=tmp_path, progress=False)
    with pytest.raises(SpecError, match=r"run.json: model.d_ff: the checkpoint's model has 256, the config 128"):
        prompt_tune(split, fx.TINY_CONFIG, model_dir, dataset="colors", workdir=tmp_path, train_file=train_rows,
                    overrides=["model.d_ff=128"], progress=False)
