"""Device mesh (data, fsdp, tensor) and the logical-axis rules that shard parameters, optimizer state and activations.

Parameters are FSDP-sharded on their model-width axis over ``fsdp`` and Megatron-style over
``tensor`` (attention heads, feed-forward hidden units and the vocabulary: q/k/v and gate/up
are column-parallel, o and down row-parallel). Batch rows split over ``data`` and ``fsdp``
together, so every device computes on its own rows. Specs depend only on mesh axis sizes, so
they can be computed for a mesh that does not exist here (benchmarks/trainer_memory.py).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from flanpipe.errors import SpecError
from trainer.config import MeshConfig

AXES = ("data", "fsdp", "tensor")
BATCH = ("data", "fsdp")

# Logical axes of every parameter leaf, by its key (layer-stacked leaves start with "layers").
_LOGICAL: dict[str, tuple[str, ...]] = {
    "embed": ("vocab", "embed"),
    "unembed": ("embed", "vocab"),
    "q": ("layers", "embed", "heads", "head_dim"),
    "k": ("layers", "embed", "heads", "head_dim"),
    "v": ("layers", "embed", "heads", "head_dim"),
    "o": ("layers", "heads", "head_dim", "embed"),
    "gate": ("layers", "embed", "mlp"),
    "up": ("layers", "embed", "mlp"),
    "down": ("layers", "mlp", "embed"),
}
# Logical axis -> mesh axis; anything not named here (layers, head_dim, norms) is replicated.
RULES: dict[str, str] = {"embed": "fsdp", "heads": "tensor", "mlp": "tensor", "vocab": "tensor"}


def mesh_shape(config: MeshConfig, devices: int, *, where: str = "<config>") -> dict[str, int]:
    """{data, fsdp, tensor} sizes for ``devices`` devices; data defaults to what fsdp*tensor leave.

    Raises:
      SpecError: the axes do not multiply to the device count.
    """
    model_parallel = config.fsdp * config.tensor
    data = config.data if config.data is not None else devices // model_parallel
    if data * model_parallel != devices:
        raise SpecError(where, None, "mesh", f"data x fsdp x tensor = {data}x{config.fsdp}x{config.tensor} "
                                             f"does not equal the {devices} devices")
    return {"data": data, "fsdp": config.fsdp, "tensor": config.tensor}


def initialize_hosts(coordinator: str | None = None, num_processes: int | None = None,
                     process_id: int | None = None) -> None:
    """Join a multi-process run (one process per host) before any device is touched.

    Without arguments the cluster is auto-detected (TPU pods, SLURM, Kubernetes); on CPU the
    processes exchange collectives through gloo. Every process then sees every device in
    ``jax.devices()`` and builds the same mesh; each reads its share of the batch rows.
    """
    if os.environ.get("JAX_PLATFORMS") == "cpu":  # checked without touching a backend, which must wait
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id)


def make_mesh(config: MeshConfig, *, where: str = "<config>") -> Mesh:
    """A Mesh over all devices with axes (data, fsdp, tensor)."""
    devices = jax.devices()
    shape = mesh_shape(config, len(devices), where=where)
    return Mesh(np.asarray(devices).reshape(tuple(shape[a] for a in AXES)), AXES)


def _leaf_spec(key: str, shape: tuple[int, ...], sizes: Mapping[str, int]) -> PartitionSpec:
    """Spec of one parameter: a rule's mesh axis where it divides the dimension, else replicated."""
    logical = _LOGICAL.get(key)
    if logical is None or len(logical) != len(shape):
        return PartitionSpec()
    axes = []
    for name, dim in zip(logical, shape):
        mesh_axis = RULES.get(name)
        axes.append(mesh_axis if mesh_axis and sizes.get(mesh_axis, 1) > 1 and dim % sizes[mesh_axis] == 0 else None)
    return PartitionSpec(*axes)


def param_specs(params: Any, sizes: Mapping[str, int]) -> Any:
    """PartitionSpecs for a parameter tree (arrays or ShapeDtypeStructs)."""
    return jax.tree_util.tree_map_with_path(lambda path, leaf: _leaf_spec(_last_key(path), leaf.shape, sizes), params)


def optimizer_specs(opt_state: Any, params: Any, sizes: Mapping[str, int]) -> Any:
    """PartitionSpecs for optimizer state whose leaves mirror parameter paths (optax Adafactor).

    A leaf shaped like its parameter takes the parameter's spec; a factored second moment
    (the parameter's shape with one dimension dropped) takes it with that dimension dropped;
    anything else (step counts, placeholders) is replicated.
    """
    specs = param_specs(params, sizes)

    def spec(path: Any, leaf: Any) -> PartitionSpec:
        found = _lookup(params, specs, path)
        if found is None:
            return PartitionSpec()
        param, param_spec = found
        shape, full = tuple(leaf.shape), tuple(param.shape)
        entries = tuple(param_spec) + (None,) * (len(full) - len(param_spec))
        if shape == full:
            return param_spec
        if len(shape) == len(full) - 1:
            for drop in _dropped_dims(path, full):
                if full[:drop] + full[drop + 1 :] == shape:
                    return PartitionSpec(*(entries[:drop] + entries[drop + 1 :]))
        return PartitionSpec()

    return jax.tree_util.tree_map_with_path(spec, opt_state)


def _dropped_dims(path: Any, full: tuple[int, ...]) -> list[int]:
    """Dimensions a factored moment may have dropped, the one optax drops first.

    optax's Adafactor factors the two largest dimensions (argsort order): ``v_row`` drops the
    largest, ``v_col`` the second largest. Which is which matters when they are equal in size.
    """
    names = {k.name for k in path if isinstance(k, jax.tree_util.GetAttrKey)}
    order = [int(i) for i in np.argsort(full)]
    first = order[-1] if "v_row" in names else order[-2] if "v_col" in names and len(order) > 1 else None
    return ([first] if first is not None else []) + [d for d in range(len(full)) if d != first]


def _last_key(path: Any) -> str:
    keys = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)]
    return str(keys[-1]) if keys else ""


def _lookup(params: Any, specs: Any, path: Any) -> tuple[Any, PartitionSpec] | None:
    """The parameter (and its spec) whose dict keys end the optimizer-state path, if any."""
    keys = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)]
    for start in range(len(keys)):
        node, spec = params, specs
        for key in keys[start:]:
            if not isinstance(node, Mapping) or key not in node:
                break
            node, spec = node[key], spec[key]
        else:
            if hasattr(node, "shape"):
                return node, spec
    return None


def named(mesh: Mesh, specs: Any) -> Any:
    """NamedShardings on ``mesh`` for a tree of PartitionSpecs."""
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda x: isinstance(x, PartitionSpec))


def per_device_bytes(tree: Any, specs: Any, sizes: Mapping[str, int]) -> int:
    """Bytes one device holds of ``tree`` (arrays or ShapeDtypeStructs) sharded by ``specs`` (ceil per dim)."""
    leaves = jax.tree.leaves(tree)
    spec_leaves = jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, PartitionSpec))
    total = 0
    for leaf, spec in zip(leaves, spec_leaves, strict=True):
        entries = tuple(spec) + (None,) * (len(leaf.shape) - len(spec))
        shard = [math.ceil(d / _axis_size(a, sizes)) for d, a in zip(leaf.shape, entries)]
        total += math.prod(shard) * np.dtype(leaf.dtype).itemsize
    return total


def _axis_size(axis: str | tuple[str, ...] | None, sizes: Mapping[str, int]) -> int:
    if axis is None:
        return 1
    names = (axis,) if isinstance(axis, str) else axis
    return math.prod(sizes.get(n, 1) for n in names)


def constrain(x: jax.Array, *axes: str | tuple[str, ...] | None) -> jax.Array:
    """with_sharding_constraint under the active mesh (jax.set_mesh); a no-op outside one.

    Axes the mesh lacks or that do not divide the dimension are dropped, so the same model
    code runs unsharded (tests, evaluation on a plain data mesh) and under any mesh.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    sizes = dict(zip(mesh.axis_names, mesh.axis_sizes))
    kept = []
    for axis, dim in zip(axes, x.shape):
        names = tuple(n for n in ((axis,) if isinstance(axis, str) else axis or ()) if n in sizes)
        kept.append(names if names and dim % math.prod(sizes[n] for n in names) == 0 else None)
    return jax.lax.with_sharding_constraint(x, PartitionSpec(*kept))
