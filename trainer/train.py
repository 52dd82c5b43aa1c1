"""The train loop: grain batches -> Adafactor steps on a (data, fsdp, tensor) mesh -> orbax checkpoints and metrics.

Resuming from ``W/checkpoints`` restores parameters, optimizer state, step and the loader
position, so a restarted run computes exactly the steps an uninterrupted one would.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import grain
import jax
import numpy as np
import optax
from jax.sharding import Mesh
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from flanpipe.errors import SpecError
from trainer import checkpoint, data, evaluate, hf_llama, model, sharding
from trainer.config import ModelConfig, OptimizerConfig, TrainerConfig, resolve_config


@dataclass(frozen=True)
class TrainResult:
    """What a call to ``train`` did: the step it reached and the loss of every step it ran."""

    workdir: Path
    start_step: int
    final_step: int
    losses: dict[int, float]
    metrics_file: Path


def make_optimizer(config: OptimizerConfig) -> optax.GradientTransformation:
    """optax Adafactor with a constant learning rate after an optional linear warmup."""
    return optax.adafactor(
        learning_rate=learning_rate_schedule(config),
        decay_rate=config.decay_rate,
        clipping_threshold=config.clipping_threshold,
        multiply_by_parameter_scale=config.multiply_by_parameter_scale,
        weight_decay_rate=config.weight_decay or None,
    )


def learning_rate_schedule(config: OptimizerConfig) -> optax.Schedule:
    """Linear warmup from 0 over ``warmup_steps``, then constant ``learning_rate``."""
    if config.warmup_steps == 0:
        return optax.constant_schedule(config.learning_rate)
    return optax.linear_schedule(0.0, config.learning_rate, config.warmup_steps)


@partial(jax.jit, static_argnames=("model_config", "optimizer_config"), donate_argnums=(0, 1))
def train_step(
    params: Any, opt_state: Any, batch: data.Batch, *, model_config: ModelConfig, optimizer_config: OptimizerConfig
) -> tuple[Any, Any, dict[str, jax.Array]]:
    """One Adafactor step on the mean target-token cross-entropy of a global batch.

    Jitted once per (model, optimizer) config: shardings come from the arguments (parameters and
    optimizer state by trainer.sharding's rules, batch rows over data x fsdp); XLA propagates
    them to the updated state and reduces the gradients across the mesh.
    """
    (loss, aux), grads = jax.value_and_grad(model.loss_fn, has_aux=True)(params, batch, model_config)
    updates, opt_state = make_optimizer(optimizer_config).update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return params, opt_state, {"loss": loss, "target_tokens": aux["target_tokens"], "grad_norm": optax.tree.norm(grads)}


class MetricsLog:
    """``W/metrics.jsonl`` (and TensorBoard event files when ``tensorboard`` is installed), written by process 0."""

    def __init__(self, workdir: Path, *, resume_step: int):
        self.path = workdir / "metrics.jsonl"
        self._enabled = jax.process_index() == 0
        self._file: Any = None
        self._tensorboard: Any = None
        if not self._enabled:
            return
        # Lines written after the checkpoint we resume from will be recomputed; drop them.
        if self.path.exists():
            kept = [line for line in self.path.read_text().splitlines() if json.loads(line)["step"] <= resume_step]
            self.path.write_text("".join(line + "\n" for line in kept))
        self._file = self.path.open("a")
        self._tensorboard = _tensorboard_writer(workdir / "tensorboard")

    def write(self, record: dict[str, Any]) -> None:
        """One JSON line; numeric fields also go to TensorBoard under ``train/<name>``."""
        if not self._enabled:
            return
        self._file.write(json.dumps(record, sort_keys=True) + "\n")
        self._file.flush()
        if self._tensorboard is not None:
            self._tensorboard(record)

    def close(self) -> None:
        """Flush and close."""
        if self._file is not None:
            self._file.close()


def _tensorboard_writer(directory: Path) -> Any:
    """A callable writing scalar records as TensorBoard events, or None if tensorboard is not installed."""
    try:
        from tensorboard.compat.proto.event_pb2 import Event  # optional dependency, so imported here
        from tensorboard.compat.proto.summary_pb2 import Summary
        from tensorboard.summary.writer.event_file_writer import EventFileWriter
    except ImportError:
        return None
    writer = EventFileWriter(str(directory))

    def write(record: dict[str, Any]) -> None:
        values = [Summary.Value(tag=f"train/{k}", simple_value=float(v)) for k, v in record.items()
                  if k != "step" and isinstance(v, (int, float))]
        writer.add_event(Event(wall_time=time.time(), step=int(record["step"]), summary=Summary(value=values)))
        writer.flush()

    return write


def state_shardings(cfg: TrainerConfig, mesh: Mesh) -> tuple[Any, Any]:
    """NamedShardings of (params, optimizer state) on ``mesh``, from trainer.sharding's rules."""
    sizes = dict(zip(mesh.axis_names, mesh.devices.shape))
    param_shapes = model.param_shapes(cfg.model)
    opt_shapes = jax.eval_shape(make_optimizer(cfg.optimizer).init, param_shapes)
    return (sharding.named(mesh, sharding.param_specs(param_shapes, sizes)),
            sharding.named(mesh, sharding.optimizer_specs(opt_shapes, param_shapes, sizes)))


def initial_state(
    cfg: TrainerConfig, mesh: Mesh, *, checkpoints: checkpoint.Checkpoints, iterator: grain.DatasetIterator
) -> tuple[Any, Any, int]:
    """(params, optimizer state, step), sharded on ``mesh``: from the latest checkpoint (which also positions
    the iterator, whatever mesh wrote it), else from ``train.init_checkpoint``'s or ``train.init_from``'s
    parameters, else a fresh init from ``train.seed``."""
    param_sh, opt_sh = state_shardings(cfg, mesh)
    optimizer = make_optimizer(cfg.optimizer)
    start = checkpoints.latest_step()
    if start is not None:
        param_shapes = model.param_shapes(cfg.model)
        opt_shapes = jax.eval_shape(optimizer.init, param_shapes)
        params, opt_state = checkpoints.restore(
            start, checkpoint.abstract(param_shapes, param_sh), checkpoint.abstract(opt_shapes, opt_sh), iterator
        )
        return params, opt_state, start
    if cfg.train.init_checkpoint is not None:
        params, _ = checkpoint.load_params(cfg.train.init_checkpoint, cfg, mesh, shardings=param_sh)
    elif cfg.train.init_from is not None:
        params = jax.device_put(hf_llama.load_params(cfg.train.init_from.path, cfg.model), param_sh)
    else:
        init = jax.jit(partial(model.init_params, cfg.model), out_shardings=param_sh)
        params = init(jax.random.key(cfg.train.seed))
    return params, jax.jit(optimizer.init, out_shardings=opt_sh)(params), 0


def train(
    data_dir: str | Path,
    config: TrainerConfig | str | Path,
    workdir: str | Path,
    *,
    overrides: Iterable[str] = (),
    stop_after: int | None = None,
    progress: bool = True,
    console: Console | None = None,
) -> TrainResult:
    """Train (or resume training) a model on one compiled split.

    Args:
      data_dir: the split directory ``DIR/<split>`` written by ``flanpipe compile``.
      config: trainer config path (trainer/configs/<name>.yaml) or a loaded TrainerConfig.
      workdir: where checkpoints, ``metrics.jsonl``, ``run.json`` and eval results go;
        if it holds checkpoints, training resumes from the latest.
      overrides: ``a.b=value`` config overrides, e.g. ``["train.steps=100"]``.
      stop_after: stop (after checkpointing) once this step is reached, as if interrupted.
      progress: show a rich progress bar.
      console: where progress and tables go (default: stdout).

    Returns:
      TrainResult with the per-step losses of the steps this call ran.

    Raises:
      SpecError: bad config, a split that does not match it, or a batch that does not divide over the devices.
      OutputError: a malformed split directory.
    """
    cfg = resolve_config(config, overrides)
    config_path = config if not isinstance(config, TrainerConfig) else "<config>"
    workdir = Path(workdir)
    console = console or Console()
    split = data.open_split(data_dir)
    data.check_split(split, cfg, config_path)
    if cfg.train.init_from is not None:
        if cfg.model.architecture != "llama":
            raise SpecError(config_path, None, "model.architecture", "must be llama to start from an hf_llama checkpoint")
        hf_llama.check_model(cfg.model, cfg.train.init_from.path, config_path)
    mesh = sharding.make_mesh(cfg.mesh, where=str(config_path))
    rows = cfg.batch_rows
    row_shards = mesh.shape["data"] * mesh.shape["fsdp"]
    if rows % row_shards:
        raise SpecError(config_path, None, "train.batch_tokens",
                        f"gives {rows} rows of {cfg.sequence_length} tokens, not divisible over "
                        f"data x fsdp = {row_shards} devices")
    checkpoint.check_run(workdir, cfg, split.path)
    iterator = iter(data.train_dataset(
        split, batch_rows=rows, seed=cfg.train.seed, process_index=jax.process_index(),
        process_count=jax.process_count(), read_threads=cfg.data.read_threads,
        prefetch_batches=cfg.data.prefetch_batches,
    ))
    checkpoints = checkpoint.Checkpoints(workdir, keep=cfg.train.keep_checkpoints)
    params, opt_state, start = initial_state(cfg, mesh, checkpoints=checkpoints, iterator=iterator)
    evaluator = evaluate.Evaluator(split, cfg, mesh) if cfg.train.eval_every else None
    metrics = MetricsLog(workdir, resume_step=start)
    schedule = learning_rate_schedule(cfg.optimizer)
    end = cfg.train.steps if stop_after is None else min(cfg.train.steps, stop_after)
    tokens_per_step = rows * cfg.sequence_length
    main_process = jax.process_index() == 0
    if start == 0 and main_process:
        console.print(f"{cfg.name}: {model.count_params(cfg.model):,} parameters, {mesh.size} device(s) "
                      f"(data {mesh.shape['data']} x fsdp {mesh.shape['fsdp']} x tensor {mesh.shape['tensor']}), "
                      f"batch {rows} rows x {cfg.sequence_length} = {tokens_per_step:,} tokens", highlight=False)
    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[stats]}"), TimeRemainingColumn(), console=console,
                   disable=not progress or not main_process)
    losses: dict[int, float] = {}
    # Per-step metrics stay on device until the next log line, so logging does not stall the steps.
    pending: list[tuple[int, dict[str, jax.Array]]] = []
    step, last_time, last_step = start, time.perf_counter(), start
    try:
        with bar:
            task = bar.add_task(f"train {cfg.name}", total=cfg.train.steps, completed=start, stats="")
            while step < end:
                batch = data.to_global(next(iterator), mesh)
                with jax.set_mesh(mesh):  # the model's activation sharding constraints refer to it
                    params, opt_state, step_metrics = train_step(
                        params, opt_state, batch, model_config=cfg.model, optimizer_config=cfg.optimizer)
                step += 1
                pending.append((step, step_metrics))
                if step % cfg.train.log_every == 0 or step == end:
                    fetched, pending = jax.device_get(pending), []
                    now = time.perf_counter()
                    rate = (step - last_step) / max(now - last_time, 1e-9)
                    last_time, last_step = now, step
                    losses.update((s, float(m["loss"])) for s, m in fetched)
                    last = fetched[-1][1]
                    record = {
                        "step": step, "loss": float(last["loss"]),
                        "loss_mean": float(np.mean([float(m["loss"]) for _, m in fetched])),
                        "grad_norm": float(last["grad_norm"]), "target_tokens": int(last["target_tokens"]),
                        "learning_rate": float(schedule(step - 1)), "steps_per_s": rate,
                        "tokens_per_s": rate * tokens_per_step,
                    }
                    metrics.write(record)
                    bar.update(task, completed=step,
                               stats=f"loss {record['loss']:.4f}  {record['tokens_per_s']:,.0f} tok/s")
                if step % cfg.train.checkpoint_every == 0 or step == end:
                    checkpoints.save(step, params, opt_state, iterator)
                if evaluator is not None and (step % cfg.train.eval_every == 0 or step == cfg.train.steps):
                    results = evaluate.evaluate_params(split, cfg, params, mesh=mesh, step=step, evaluator=evaluator)
                    if main_process:
                        evaluate.write_results(results, workdir / "eval" / f"step_{step:08d}.json")
                    metrics.write({"step": step, "eval": _headline(results)})
                    if progress and main_process:
                        evaluate.print_results(results, console)
    finally:
        checkpoints.close()
        metrics.close()
    return TrainResult(workdir=workdir, start_step=start, final_step=step, losses=losses, metrics_file=metrics.path)


def _headline(results: dict[str, Any]) -> dict[str, Any]:
    """Mean-over-templates test score per eval set, for the metrics log."""
    return {f"{section}/{name}": scores["mean_over_templates"].get("test")
            for section in ("zero_shot", "few_shot") for name, scores in results.get(section, {}).items()}


def main(data_dir: str | Path, config_path: str | Path, workdir: str | Path, *, overrides: Iterable[str] = (),
         progress: bool = True) -> TrainResult:
    """Entry point for ``flanpipe train --data DIR/<split> --config C --workdir W``."""
    return train(data_dir, config_path, workdir, overrides=overrides, progress=progress)
