"""orbax checkpoints of a run (params, optimizer state, step, grain iterator state) and the run's identity file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from flanpipe.errors import OutputError, SpecError
from trainer import model
from trainer.config import TrainerConfig

# Config fields a resumed run must share with the run that wrote the checkpoints; the others
# (steps, logging, checkpoint and eval cadence, reader threads) may change between restarts.
_RUN_FIELDS = ("model", "optimizer", "data.inputs_length", "data.targets_length", "train.batch_tokens", "train.seed")


def replicated(mesh: Mesh) -> NamedSharding:
    """Sharding that keeps a full copy on every device (parameters and optimizer state)."""
    return NamedSharding(mesh, PartitionSpec())


def abstract(tree: Any, sharding: Any) -> Any:
    """Shape/dtype/sharding stand-ins for restoring ``tree`` (a pytree of arrays or ShapeDtypeStructs).

    ``sharding``: one NamedSharding for every leaf, or a tree of them matching ``tree``, so a
    checkpoint saved under one mesh restores sharded under another.
    """
    if isinstance(sharding, NamedSharding):
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, sharding)


class Checkpoints:
    """The checkpoints of one workdir: ``W/checkpoints/<step>/{params,opt_state,data}``."""

    def __init__(self, workdir: Path, *, keep: int | None, create: bool = True):
        self.directory = Path(workdir).resolve() / "checkpoints"
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=create)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        """Step of the newest complete checkpoint, or None."""
        return self.manager.latest_step()

    def save(self, step: int, params: Any, opt_state: Any, iterator: grain.DatasetIterator) -> None:
        """Save asynchronously; the grain iterator's state is captured before this returns."""
        self.manager.save(
            step,
            args=ocp.args.Composite(
                params=ocp.args.StandardSave(params),
                opt_state=ocp.args.StandardSave(opt_state),
                data=grain.checkpoint.CheckpointSave(iterator),
            ),
        )

    def restore(
        self, step: int, params_like: Any, opt_state_like: Any, iterator: grain.DatasetIterator
    ) -> tuple[Any, Any]:
        """Restore params and optimizer state (into the shapes/shardings given) and set the iterator's state."""
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                params=ocp.args.StandardRestore(params_like),
                opt_state=ocp.args.StandardRestore(opt_state_like),
                data=grain.checkpoint.CheckpointRestore(iterator),
            ),
        )
        return restored["params"], restored["opt_state"]

    def restore_params(self, step: int, params_like: Any) -> Any:
        """Restore only the parameters."""
        restored = self.manager.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore(params_like)))
        return restored["params"]

    def close(self) -> None:
        """Wait for pending saves, then release the manager."""
        self.manager.wait_until_finished()
        self.manager.close()


def load_params(
    workdir: Path, config: TrainerConfig, mesh: Mesh, *, step: int | None = None, shardings: Any = None
) -> tuple[Any, int]:
    """Parameters of a run's checkpoint (latest unless ``step``), replicated over ``mesh`` or by ``shardings``.

    ``shardings``: a tree of NamedShardings (trainer.train.state_shardings), so a model too big
    to replicate restores straight into its shards, whatever mesh saved it.

    Raises:
      OutputError: the workdir has no checkpoint (or not that step).
      SpecError: the run was trained with another model shape (from ``W/run.json``).
    """
    if not (Path(workdir) / "checkpoints").is_dir():
        raise OutputError(f"{Path(workdir) / 'checkpoints'}: no checkpoints; run `train` first")
    run_file = Path(workdir) / "run.json"
    if run_file.exists():
        saved = json.loads(run_file.read_text())["config"]["model"]
        now = config.model.model_dump(mode="json")
        for key in sorted(saved.keys() | now.keys()):
            if saved.get(key) != now.get(key):
                raise SpecError(run_file, None, f"model.{key}",
                                f"the checkpoint's model has {saved.get(key)!r}, the config {now.get(key)!r}")
    checkpoints = Checkpoints(workdir, keep=None, create=False)  # only read: never saves or deletes
    try:
        chosen = checkpoints.latest_step() if step is None else step
        available = checkpoints.manager.all_steps()
        if chosen is None or chosen not in available:
            raise OutputError(
                f"{checkpoints.directory}: no checkpoint"
                + (f" at step {step} (have {sorted(available)})" if step is not None else "; run `train` first")
            )
        shapes = model.param_shapes(config.model)
        return checkpoints.restore_params(chosen, abstract(shapes, shardings or replicated(mesh))), chosen
    finally:
        checkpoints.close()


def check_run(workdir: Path, config: TrainerConfig, split_path: Path) -> None:
    """Record the run's identity in ``W/run.json``, or refuse a restart whose config or data differ.

    Raises:
      SpecError: naming the field that changed since the run began.
    """
    path = Path(workdir) / "run.json"
    current = {"split": str(Path(split_path).resolve()), "config": config.model_dump(mode="json")}
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")
        return
    saved = json.loads(path.read_text())
    if saved["split"] != current["split"]:
        raise SpecError(path, None, "split",
                        f"this workdir trains on {saved['split']}, not {current['split']}; use a new workdir")
    for field in _RUN_FIELDS:
        before, now = _get(saved["config"], field), _get(current["config"], field)
        if before != now:
            raise SpecError(
                path, None, field,
                f"was {before!r} when this run began, now {now!r}; resume with the same config or use a new workdir",
            )
    # The saved file keeps the latest non-identity settings (e.g. a raised train.steps).
    path.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")


def _get(data: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        data = data[part]
    return data
