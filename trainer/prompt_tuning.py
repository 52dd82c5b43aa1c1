"""Prompt tuning (paper Section 4.5): a soft prompt trained on one dataset, the model frozen, then evaluated."""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import grain
import jax
import numpy as np
import optax
import pyarrow.parquet as pq
from jax.sharding import Mesh
from rich.console import Console
from rich.progress import Progress

from flanpipe.errors import OutputError, SpecError, did_you_mean
from trainer import checkpoint, data, evaluate, model
from trainer.config import ModelConfig, TrainerConfig, resolve_config
from trainer.train import MetricsLog

# Prompt vectors start as embeddings of random vocabulary tokens (Lester et al., 2021), skipping pad/eos/unk.
_FIRST_ORDINARY_TOKEN = 3


@dataclass(frozen=True)
class PromptTuneResult:
    """The tuned prompt, the loss of every step, and the evaluation of the prompted model."""

    workdir: Path
    dataset: str
    examples: int
    losses: dict[int, float]
    prompt_file: Path
    results: dict[str, Any]


def read_train_rows(file: Path) -> list[dict[str, str]]:
    """Training examples for the prompt: a Parquet file with at least ``inputs`` and ``targets`` (eval-row columns).

    Raises:
      OutputError: the file is missing, empty, or lacks a required column.
    """
    if not file.exists():
        raise OutputError(f"{file}: prompt-tuning train rows not found")
    table = pq.read_table(file)
    missing = [c for c in ("inputs", "targets") if c not in table.column_names]
    if missing:
        raise OutputError(f"{file}: missing column(s) {', '.join(missing)}")
    if table.num_rows == 0:
        raise OutputError(f"{file}: no rows")
    keys = table.column("example_key").to_pylist() if "example_key" in table.column_names else range(table.num_rows)
    return [
        {"inputs": i, "targets": t, "example_key": str(k)}
        for i, t, k in zip(table.column("inputs").to_pylist(), table.column("targets").to_pylist(), keys)
    ]


def low_resource(rows: list[dict[str, str]], n: int, seed: int) -> list[dict[str, str]]:
    """``n`` distinct examples (one row each), chosen by ``seed``; the paper's low-resource setting uses 32."""
    first: dict[str, dict[str, str]] = {}
    for row in rows:
        first.setdefault(row["example_key"], row)
    keys = sorted(first)
    random.Random(seed).shuffle(keys)
    if len(keys) < n:
        raise OutputError(f"low-resource prompt tuning needs {n} distinct examples, the train rows have {len(keys)}")
    return [first[k] for k in keys[:n]]


@partial(jax.jit, static_argnames=("model_config", "learning_rate", "weight_decay"), donate_argnums=(0, 1))
def prompt_step(
    prompt: jax.Array, opt_state: Any, params: Any, batch: data.Batch, *, model_config: ModelConfig,
    learning_rate: float, weight_decay: float,
) -> tuple[jax.Array, Any, jax.Array]:
    """One Adafactor step on the soft prompt only; ``params`` are a constant."""
    (loss, _), grad = jax.value_and_grad(
        lambda p: model.loss_fn(params, batch, model_config, soft_prompt=p), has_aux=True
    )(prompt)
    updates, opt_state = make_optimizer(learning_rate, weight_decay).update(grad, opt_state, prompt)
    return optax.apply_updates(prompt, updates), opt_state, loss


def make_optimizer(learning_rate: float, weight_decay: float) -> optax.GradientTransformation:
    """Adafactor on the prompt with decoupled weight decay (the paper: 1e-4)."""
    return optax.adafactor(learning_rate=learning_rate, weight_decay_rate=weight_decay or None,
                           multiply_by_parameter_scale=False)


def prompt_tune(
    data_dir: str | Path,
    config: TrainerConfig | str | Path,
    model_workdir: str | Path,
    *,
    dataset: str,
    workdir: str | Path,
    train_file: str | Path | None = None,
    low_resource_setting: bool = False,
    overrides: Iterable[str] = (),
    progress: bool = True,
    console: Console | None = None,
) -> PromptTuneResult:
    """Tune a soft prompt for ``dataset`` on top of a frozen trained model, then evaluate it on that dataset.

    Args:
      data_dir: the compiled split ``DIR/<split>``; ``dataset`` must be one of its eval sets.
      config: trainer config of the model (its ``prompt_tuning`` section sets length, decay, steps).
      model_workdir: the instruction-tuned run whose latest checkpoint is frozen.
      dataset: which held-out dataset to tune on and evaluate.
      workdir: where ``prompt.npy``, ``metrics.jsonl`` and ``eval/prompt_tuning.json`` go.
      train_file: Parquet of training rows (inputs, targets[, example_key]); default: the split
        manifest's ``prompt_tuning.<dataset>.file``.
      low_resource_setting: use only ``prompt_tuning.low_resource_examples`` (32) examples.

    Raises:
      SpecError: unknown dataset or a batch that does not divide over the devices.
      OutputError: no train rows for the dataset, or no checkpoint in ``model_workdir``.
    """
    cfg = resolve_config(config, overrides)
    pt = cfg.prompt_tuning
    split = data.open_split(data_dir)
    data.check_split(split, cfg, config if not isinstance(config, TrainerConfig) else "<config>")
    if dataset not in split.eval_sets:
        raise SpecError(split.path / "manifest.json", None, "eval",
                        f"no eval set {dataset!r} to prompt-tune on{did_you_mean(dataset, split.eval_sets)}")
    file = Path(train_file) if train_file is not None else split.prompt_tuning_files.get(dataset)
    if file is None:
        raise OutputError(
            f"{split.path / 'manifest.json'}: no prompt_tuning.{dataset}.file; pass train_file (--train-file)")
    rows = read_train_rows(file)
    if low_resource_setting:
        rows = low_resource(rows, pt.low_resource_examples, cfg.train.seed)
    mesh = data.make_mesh()
    if pt.batch_size % mesh.size:
        raise SpecError("<config>", None, "prompt_tuning.batch_size",
                        f"{pt.batch_size} does not divide over {mesh.size} devices")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    console = console or Console()

    tokenizer = data.load_tokenizer(split)
    inputs = tokenizer.encode_batch([r["inputs"] for r in rows])
    targets = tokenizer.encode_batch([r["targets"] for r in rows])
    featurized = [
        data.featurize(i, t, layout=split.layout, inputs_length=split.inputs_length,
                       targets_length=split.targets_length, special=split.special, prompt_length=pt.prompt_length,
                       truncate=split.truncate)
        for i, t in zip(inputs, targets)
    ]
    params, _ = checkpoint.load_params(Path(model_workdir), cfg, mesh)
    prompt, losses = _train_prompt(cfg, params, featurized, mesh=mesh, workdir=workdir,
                                   progress=progress and jax.process_index() == 0, console=console, label=dataset)
    results = evaluate.evaluate_params(split, cfg, params, mesh=mesh, soft_prompt=prompt, datasets=[dataset],
                                       step=pt.steps)
    results["prompt_tuning"] = {"dataset": dataset, "examples": len(rows), "low_resource": low_resource_setting,
                                "prompt_length": pt.prompt_length, "weight_decay": pt.weight_decay}
    prompt_file = workdir / "prompt.npy"
    if jax.process_index() == 0:
        np.save(prompt_file, np.asarray(jax.device_get(prompt)))
        evaluate.write_results(results, workdir / "eval" / "prompt_tuning.json")
        evaluate.print_results(results, console)
    return PromptTuneResult(workdir, dataset, len(rows), losses, prompt_file, results)


def _train_prompt(
    cfg: TrainerConfig, params: Any, rows: list[data.Batch], *, mesh: Mesh, workdir: Path, progress: bool,
    console: Console, label: str,
) -> tuple[jax.Array, dict[int, float]]:
    """Adafactor on a fresh soft prompt for ``prompt_tuning.steps`` steps over shuffled, repeated rows."""
    pt = cfg.prompt_tuning
    replicated = checkpoint.replicated(mesh)
    batches = iter(grain.MapDataset.source(rows).shuffle(seed=cfg.train.seed).repeat().batch(pt.batch_size))
    token_ids = np.random.default_rng(cfg.train.seed).integers(_FIRST_ORDINARY_TOKEN, cfg.model.vocab_size,
                                                                pt.prompt_length)
    prompt = jax.device_put(np.asarray(params["embed"])[token_ids], replicated)
    opt_state = jax.jit(make_optimizer(pt.learning_rate, pt.weight_decay).init, out_shardings=replicated)(prompt)
    losses: dict[int, float] = {}
    pending: list[tuple[int, jax.Array]] = []
    metrics = MetricsLog(workdir, resume_step=0)
    with Progress(console=console, disable=not progress) as bar:
        task = bar.add_task(f"prompt-tune {label}", total=pt.steps)
        for step in range(1, pt.steps + 1):
            batch = data.shard_full_batch(next(batches), mesh)
            prompt, opt_state, loss = prompt_step(prompt, opt_state, params, batch, model_config=cfg.model,
                                                  learning_rate=pt.learning_rate, weight_decay=pt.weight_decay)
            pending.append((step, loss))
            if step % cfg.train.log_every == 0 or step == pt.steps:
                losses.update((s, float(value)) for s, value in jax.device_get(pending))
                pending = []
                metrics.write({"step": step, "loss": losses[step]})
                bar.update(task, completed=step, description=f"prompt-tune {label} loss {losses[step]:.4f}")
    metrics.close()
    return prompt, losses

