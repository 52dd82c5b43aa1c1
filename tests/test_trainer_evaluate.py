"""trainer.evaluate: rank classification, generation metrics, per-template / best-dev summaries, few-shot, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trainer_fixtures as fx
from rich.console import Console
from typer.testing import CliRunner

from flanpipe.errors import OutputError, SpecError
from trainer import evaluate
from trainer.__main__ import app
from trainer.train import train


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    split, workdir, _ = fx.shared_run(tmp_path_factory)
    out = evaluate.evaluate(split, fx.TINY_CONFIG, workdir, console=Console(quiet=True))
    return out, workdir


def test_rank_classification_learns_the_synthetic_task(results: tuple[dict, Path]) -> None:
    out, _ = results
    colors = out["zero_shot"]["colors"]
    assert colors["kind"] == "classification" and colors["metric"] == "accuracy"
    assert set(colors["templates"]) == {"0", "1", "2"}  # the turned template has no options: not rank-classified
    assert colors["skipped_rows"] == 12 and colors["rows"] == 72
    assert colors["mean_over_templates"]["test"] >= 90.0
    assert colors["best_dev_template"] in (0, 1, 2) and colors["best_dev_test"] >= 90.0
    assert colors["details"]["0"]["test"]["n"] == 12


def test_generation_sets_get_bleu_and_rouge(results: tuple[dict, Path]) -> None:
    out, _ = results
    copy, echo = out["zero_shot"]["copy"], out["zero_shot"]["echo"]
    assert copy["metric"] == "bleu" and echo["metric"] == "rouge"
    assert copy["mean_over_templates"]["test"] > 50.0  # the model learned to repeat words
    assert {"rouge1", "rouge2", "rougeL", "samples"} <= set(echo["details"]["0"]["test"])
    assert 0.0 <= echo["mean_over_templates"]["test"] <= 100.0


def test_few_shot_sets_are_reported_and_results_written(results: tuple[dict, Path]) -> None:
    out, workdir = results
    assert set(out["few_shot"]) == {"colors"} and out["step"] == 300
    assert json.loads((workdir / "eval" / "step_00000300.json").read_text()) == json.loads(json.dumps(out))


def test_summary_picks_the_template_with_the_best_dev_score() -> None:
    scores = {0: {"validation": 50.0, "test": 40.0}, 1: {"validation": 80.0, "test": 60.0},
              2: {"validation": 80.0, "test": 90.0}, 3: {"test": 10.0}}
    summary = evaluate.summarize(scores)
    assert summary["best_dev_template"] == 1 and summary["best_dev_test"] == 60.0  # ties: lower template
    assert summary["mean_over_templates"] == {"validation": 70.0, "test": 50.0}
    assert evaluate.summarize({0: {"test": 5.0}})["best_dev_template"] is None


def test_metrics() -> None:
    assert evaluate.accuracy([True, False, True, True]) == 75.0
    assert evaluate.bleu(["the cat sat on the mat"], ["the cat sat on the mat"]) == pytest.approx(100.0)
    assert evaluate.rouge(["a b c"], ["a b c"])["rougeL"] == pytest.approx(100.0)
    assert evaluate.rouge(["x y"], ["a b c"])["rouge1"] == 0.0


def test_unknown_dataset_and_missing_checkpoint(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    split, workdir, _ = fx.shared_run(tmp_path_factory)
    with pytest.raises(SpecError, match=r"no eval set 'colours' \(did you mean 'colors'\?\)"):
        evaluate.evaluate(split, fx.TINY_CONFIG, workdir, datasets=["colours"], console=Console(quiet=True))
    with pytest.raises(OutputError, match="no checkpoint"):
        evaluate.evaluate(split, fx.TINY_CONFIG, tmp_path, console=Console(quiet=True))


def test_cli_eval_prints_json(tmp_path_factory: pytest.TempPathFactory) -> None:
    split, workdir, _ = fx.shared_run(tmp_path_factory)
    result = CliRunner().invoke(app, ["eval", "--data", str(split), "--config", str(fx.TINY_CONFIG),
                                      "--workdir", str(workdir), "--dataset", "echo", "--json"])
    assert result.exit_code == 0, result.output
    assert set(json.loads(result.output)["zero_shot"]) == {"echo"}


def test_encoder_decoder_split_trains_and_evaluates(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    split = fx.shared_split(tmp_path_factory, "encoder_decoder")
    overrides = ["model.layout=encoder_decoder", "train.batch_tokens=128", "train.steps=3"]
    result = train(split, fx.TINY_CONFIG, tmp_path, overrides=overrides, progress=False)
    assert result.final_step == 3 and all(loss == loss for loss in result.losses.values())
    out = evaluate.evaluate(split, fx.TINY_CONFIG, tmp_path, overrides=overrides, datasets=["colors", "echo"],
                            console=Console(quiet=True))
    assert set(out["zero_shot"]) == {"colors", "echo"} and out["step"] == 3
    assert 0.0 <= out["zero_shot"]["colors"]["mean_over_templates"]["test"] <= 100.0
