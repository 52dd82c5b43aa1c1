"""trainer.train: overfitting, 1 vs 8 devices, exact resume, refusals, metrics and the CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import trainer_fixtures as fx
from compile_fixtures import compile_world, make_world
from rich.console import Console
from typer.testing import CliRunner

from flanpipe.errors import SpecError
from trainer.__main__ import app
from trainer.evaluate import evaluate
from trainer.train import TrainResult, train

# A short run logged at every step, checkpointed every 4 steps.
SHORT = ["train.steps=12", "train.log_every=1", "train.checkpoint_every=4"]
# 1 vs 8 devices: the same global batches, but the loss and gradient sums are reduced in a
# different order, so losses agree to float32 rounding (measured: max |diff| ~1e-6).
DEVICE_TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def split_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fx.shared_split(tmp_path_factory)


@pytest.fixture(scope="module")
def reference(split_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    return train(split_dir, fx.TINY_CONFIG, tmp_path_factory.mktemp("reference"), overrides=SHORT, progress=False)


def test_tiny_model_overfits_a_small_split(tmp_path_factory: pytest.TempPathFactory) -> None:
    _, workdir, result = fx.shared_run(tmp_path_factory)
    first, last = result.losses[1], result.losses[300]
    print(f"overfit: loss {first:.3f} at step 1 -> {last:.4f} at step 300")
    assert first > 4.0 and last < 0.05 * first
    lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == list(range(10, 301, 10))
    assert {"loss", "tokens_per_s", "steps_per_s", "learning_rate", "grad_norm"} <= set(lines[-1])
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == ["100", "200", "300"]


def _train_in_subprocess(split_dir: Path, workdir: Path, *, devices: int = 1) -> dict:
    """Run ``train`` with SHORT in a fresh Python process; return its device count and per-step losses."""
    script = (
        "import json, sys, jax\n"
        "from trainer.train import train\n"
        "r = train(sys.argv[1], sys.argv[2], sys.argv[3], overrides=sys.argv[4:], progress=False)\n"
        "print(json.dumps({'devices': jax.device_count(), 'start': r.start_step, 'losses': r.losses}))\n"
    )
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", script, str(split_dir), str(fx.TINY_CONFIG), str(workdir), *SHORT],
                         env=env, capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return dict(result, losses={int(k): v for k, v in result["losses"].items()})


def test_interrupted_and_resumed_training_equals_uninterrupted(
    split_dir: Path, reference: TrainResult, tmp_path: Path
) -> None:
    first = train(split_dir, fx.TINY_CONFIG, tmp_path, overrides=SHORT, stop_after=6, progress=False)
    assert first.final_step == 6 and first.losses == {s: reference.losses[s] for s in range(1, 7)}
    # Lose the step-6 checkpoint, as if killed before it was written, and restart in a new
    # process: it resumes from step 4 and recomputes steps 5..12.
    shutil.rmtree(tmp_path / "checkpoints" / "6")
    resumed = _train_in_subprocess(split_dir, tmp_path)
    assert resumed["start"] == 4
    assert resumed["losses"] == {s: reference.losses[s] for s in range(5, 13)}  # bit-identical
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == list(range(1, 13))
    assert [r["loss"] for r in logged] == [reference.losses[s] for s in range(1, 13)]


def test_one_and_eight_devices_give_the_same_losses(split_dir: Path, reference: TrainResult, tmp_path: Path) -> None:
    result = _train_in_subprocess(split_dir, tmp_path, devices=8)
    assert result["devices"] == 8
    diffs = [abs(result["losses"][s] - reference.losses[s]) for s in range(1, 13)]
    print(f"1 vs 8 devices: max |loss diff| over 12 steps = {max(diffs):.2e}")
    assert max(diffs) <= DEVICE_TOLERANCE


def test_vocabulary_mismatch_is_refused_before_anything_is_written(split_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"model\.vocab_size: is 100 but split 'heldout' has vocab_size 128"):
        train(split_dir, fx.TINY_CONFIG, tmp_path / "w", overrides=["model.vocab_size=100"], progress=False)
    assert not (tmp_path / "w").exists()


def test_resuming_with_a_different_config_is_refused(split_dir: Path, reference: TrainResult) -> None:
    with pytest.raises(SpecError, match=r"optimizer: was .* when this run began"):
        train(split_dir, fx.TINY_CONFIG, reference.workdir, overrides=[*SHORT, "optimizer.learning_rate=0.5"],
              progress=False)


def test_raising_steps_continues_a_finished_run(split_dir: Path, reference: TrainResult, tmp_path: Path) -> None:
    shutil.copytree(reference.workdir, tmp_path / "w")
    more = train(split_dir, fx.TINY_CONFIG, tmp_path / "w", overrides=[*SHORT, "train.steps=14"], progress=False)
    assert (more.start_step, more.final_step, sorted(more.losses)) == (12, 14, [13, 14])


def test_init_checkpoint_starts_from_another_runs_parameters(
    split_dir: Path, reference: TrainResult, tmp_path: Path
) -> None:
    init = f"train.init_checkpoint={reference.workdir}"
    evals = ["train.eval_every=1", "eval.max_examples=1"]
    overrides = [*SHORT, "train.steps=1", init, *evals]
    tuned = train(split_dir, fx.TINY_CONFIG, tmp_path, overrides=overrides, progress=False)
    assert tuned.losses[1] < 0.6 * reference.losses[1]  # same first batch, trained parameters
    assert json.loads((tmp_path / "eval" / "step_00000001.json").read_text())["zero_shot"]["colors"]["rows"] == 6
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert set(logged[-1]["eval"]) == {"zero_shot/colors", "zero_shot/copy", "zero_shot/echo", "few_shot/colors"}


def test_cli_reports_errors_in_one_line(split_dir: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["train", "--data", str(split_dir), "--config", str(fx.TINY_CONFIG),
                                      "--workdir", str(tmp_path), "--set", "model.vocab_sise=1", "--quiet"])
    assert result.exit_code != 0
    assert isinstance(result.exception, SpecError) and "did you mean 'vocab_size'" in str(result.exception)


def test_trains_and_evaluates_a_split_the_compiler_wrote(tmp_path: Path) -> None:
    make_world(tmp_path)  # the compiler's own test world: rte (classification) + two generation sets
    compile_world(tmp_path)
    split = tmp_path / "out" / "natural_language_inference"
    manifest = json.loads((split / "manifest.json").read_text())
    overrides = [f"model.vocab_size={manifest['vocab_size']}", f"data.inputs_length={manifest['lengths']['inputs']}",
                 f"data.targets_length={manifest['lengths']['targets']}", "train.batch_tokens=640", "train.steps=30"]
    result = train(split, fx.TINY_CONFIG, tmp_path / "run", overrides=overrides, progress=False)
    assert result.losses[30] < 0.5 * result.losses[1]
    out = evaluate(split, fx.TINY_CONFIG, tmp_path / "run", overrides=overrides, console=Console(quiet=True))
    rte = out["zero_shot"]["rte"]
    assert rte["kind"] == "classification" and len(rte["templates"]) >= 5 and rte["best_dev_template"] is not None
