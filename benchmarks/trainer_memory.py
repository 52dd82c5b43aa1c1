"""Prints per-device memory of the paper's configs (422M ... 137B) on a mesh, and the smallest mesh each fits.

    python benchmarks/trainer_memory.py [--mesh 1,2,64] [--hbm-gib 32] [--max-devices 4096] [--check]

Parameters and Adafactor state come from the model's abstract shapes (``jax.eval_shape``: nothing
is allocated) sharded by trainer/sharding.py's rules, exactly as the train step places them.
Gradients are a float32 copy of the parameters, sharded the same way. Activations are an estimate
from the shapes: with remat, every layer's input (the scan carry) is kept and one block's working
set (q/k/v/attention weights/feed-forward hidden, and their gradients) is live at a time; without
remat every block's working set is kept; plus the float32 logits and their gradient.

The default mesh is a TPU v4-256 slice (128 chips, 32 GiB HBM each) as data 1 x fsdp 2 x tensor 64:
the paper's batch is 6 packed rows, so data x fsdp must divide 6. "Smallest mesh" searches
power-of-two device counts, and on each every (data, fsdp, tensor) with data x fsdp dividing the
rows, for the one with the least per-device total; a config fits where that total is within HBM.

--check compiles the tiny config's train step on 8 simulated CPU devices and prints XLA's memory
analysis beside this script's figures for the same mesh, to show how far the estimate is off.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CONFIGS = ["flan_422m", "flan_2b", "flan_8b", "flan_68b", "flan_137b"]
GIB = 1024**3


@dataclass(frozen=True)
class Usage:
    """Per-device bytes of one config on one mesh."""

    params: int
    optimizer: int
    gradients: int
    activations: int

    @property
    def total(self) -> int:
        return self.params + self.optimizer + self.gradients + self.activations


def _split(dim: int, parts: int) -> int:
    """A dimension's per-device size: divided when the axis divides it (as the rules do), else whole."""
    return dim // parts if parts > 1 and dim % parts == 0 else dim


def activation_bytes(cfg: object, mesh: dict[str, int]) -> int:
    """Estimated live activation bytes per device in one train step (see the module docstring)."""
    import numpy as np

    m = cfg.model  # type: ignore[attr-defined]
    rows = cfg.batch_rows // (mesh["data"] * mesh["fsdp"])  # type: ignore[attr-defined]
    length = cfg.sequence_length  # type: ignore[attr-defined]
    act = np.dtype(m.dtype).itemsize
    tensor = mesh["tensor"]
    heads, kv, ff, vocab = (_split(m.num_heads, tensor), _split(m.kv_heads, tensor), _split(m.d_ff, tensor),
                            _split(m.vocab_size, tensor))
    tokens = rows * length
    carry = tokens * m.d_model * act
    block = (tokens * (heads + 2 * kv + heads) * m.head_dim * act  # q, k, v, attention output
             + 2 * rows * heads * length * length * 4  # attention logits and weights, float32
             + rows * length * length  # boolean mask
             + 3 * tokens * ff * act  # gate, up, hidden
             + 4 * carry)  # norms and residual sums
    stacks = 2 if m.layout == "encoder_decoder" else 1
    layers = m.num_layers * stacks
    kept = layers * carry + 2 * block if m.remat else layers * (carry + block) + block
    logits = 3 * tokens * vocab * 4  # logits, log-softmax and their gradient, float32
    return kept + logits


@functools.cache
def shapes(name: str) -> tuple[object, object, object]:
    """(config, parameter shapes, Adafactor state shapes) of trainer/configs/<name>.yaml, from jax.eval_shape."""
    import jax

    from trainer import model
    from trainer.config import load_config
    from trainer.train import make_optimizer

    cfg = load_config(REPO / "trainer" / "configs" / f"{name}.yaml")
    params = model.param_shapes(cfg.model)
    return cfg, params, jax.eval_shape(make_optimizer(cfg.optimizer).init, params)


def usage(name: str, mesh: dict[str, int]) -> Usage:
    """Per-device bytes of trainer/configs/<name>.yaml on a mesh of the given axis sizes."""
    from trainer import sharding

    cfg, params, opt = shapes(name)
    param_specs = sharding.param_specs(params, mesh)
    param_bytes = sharding.per_device_bytes(params, param_specs, mesh)
    opt_bytes = sharding.per_device_bytes(opt, sharding.optimizer_specs(opt, params, mesh), mesh)
    return Usage(param_bytes, opt_bytes, param_bytes, activation_bytes(cfg, mesh))


def meshes(devices: int, rows: int) -> list[dict[str, int]]:
    """Every (data, fsdp, tensor) on ``devices`` devices whose data x fsdp divides the batch rows."""
    out = []
    for data in range(1, devices + 1):
        for fsdp in range(1, devices // data + 1):
            if devices % (data * fsdp) == 0 and rows % (data * fsdp) == 0:
                out.append({"data": data, "fsdp": fsdp, "tensor": devices // (data * fsdp)})
    return out


def smallest_fit(name: str, hbm: int, max_devices: int) -> tuple[dict[str, int], Usage] | None:
    """The fewest power-of-two devices (then the least per-device total) on which ``name`` fits in ``hbm``."""
    rows = shapes(name)[0].batch_rows  # type: ignore[attr-defined]
    devices = 1
    while devices <= max_devices:
        best = min(((m, usage(name, m)) for m in meshes(devices, rows)), key=lambda mu: mu[1].total)
        if best[1].total <= hbm:
            return best
        devices *= 2
    return None


def _gib(n: int) -> str:
    return f"{n / GIB:9.2f}"


def _mesh(m: dict[str, int]) -> str:
    return f"{m['data']}x{m['fsdp']}x{m['tensor']} ({math.prod(m.values())})"


def check() -> None:
    """Tiny config on 8 simulated CPU devices: XLA's compiled memory analysis beside this estimate."""
    import jax
    import jax.numpy as jnp

    from trainer import data, model, sharding
    from trainer.config import MeshConfig, load_config
    from trainer.train import make_optimizer, state_shardings, train_step

    print("\n--check: trainer/configs/tiny.yaml on 8 CPU devices (bytes per device)")
    print(f"{'mesh':<12}{'XLA params+opt':>16}{'ours':>10}{'XLA temp':>12}{'our grads+act':>15}")
    for shape in [(8, 1, 1), (2, 4, 1), (2, 2, 2)]:
        cfg = load_config(REPO / "trainer" / "configs" / "tiny.yaml")
        cfg = cfg.model_copy(update={"mesh": MeshConfig(data=shape[0], fsdp=shape[1], tensor=shape[2])})
        mesh = sharding.make_mesh(cfg.mesh)
        sizes = dict(zip(mesh.axis_names, mesh.devices.shape))
        psh, osh = state_shardings(cfg, mesh)
        params = model.param_shapes(cfg.model)
        opt = jax.eval_shape(make_optimizer(cfg.optimizer).init, params)

        def like(tree: object, shardings: object) -> object:
            return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)

        batch = {k: jax.ShapeDtypeStruct((cfg.batch_rows, cfg.sequence_length), jnp.int32,
                                         sharding=data.batch_sharding(mesh))
                 for k in ("decoder_input_tokens", "decoder_target_tokens", "decoder_segment_ids",
                           "decoder_positions", "decoder_causal_attention", "decoder_loss_weights")}
        with jax.set_mesh(mesh):
            stats = train_step.lower(like(params, psh), like(opt, osh), batch, model_config=cfg.model,
                                     optimizer_config=cfg.optimizer).compile().memory_analysis()
        batch_bytes = 6 * 4 * cfg.batch_rows * cfg.sequence_length // (shape[0] * shape[1])
        ours = (sharding.per_device_bytes(params, sharding.param_specs(params, sizes), sizes)
                + sharding.per_device_bytes(opt, sharding.optimizer_specs(opt, params, sizes), sizes))
        ours_temp = sharding.per_device_bytes(params, sharding.param_specs(params, sizes), sizes) + activation_bytes(
            cfg, sizes)
        print(f"{'x'.join(map(str, shape)):<12}{stats.argument_size_in_bytes - batch_bytes:>16,}{ours:>10,}"
              f"{stats.temp_size_in_bytes:>12,}{ours_temp:>15,}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mesh", default="1,2,64", help="data,fsdp,tensor (default: TPU v4-256, 128 chips)")
    parser.add_argument("--hbm-gib", type=float, default=32.0, help="Memory per device (default 32, TPU v4)")
    parser.add_argument("--max-devices", type=int, default=4096, help="Largest device count searched")
    parser.add_argument("--check", action="store_true", help="Compare with XLA on 8 simulated CPU devices")
    args = parser.parse_args()
    if args.check:
        os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    sys.path.insert(0, str(REPO))
    from trainer import model
    from trainer.config import load_config

    data, fsdp, tensor = (int(x) for x in args.mesh.split(","))
    mesh = {"data": data, "fsdp": fsdp, "tensor": tensor}
    hbm = int(args.hbm_gib * GIB)
    print(f"per-device GiB on mesh data x fsdp x tensor = {_mesh(mesh)}, {args.hbm_gib:g} GiB per device")
    print(f"{'config':<11}{'params':>9}{'param GiB':>10}{'Adafactor':>10}{'grads':>10}{'activ.':>10}{'total':>10}"
          f"  fits   smallest mesh that fits (data x fsdp x tensor (devices): total GiB)")
    for name in CONFIGS:
        cfg = load_config(REPO / "trainer" / "configs" / f"{name}.yaml")
        rows_ok = cfg.batch_rows % (data * fsdp) == 0
        u = usage(name, mesh)
        fit = smallest_fit(name, hbm, args.max_devices)
        where = f"{_mesh(fit[0])}: {fit[1].total / GIB:.2f}" if fit else f"none up to {args.max_devices} devices"
        fits = ("yes" if u.total <= hbm else "no") if rows_ok else "rows!"
        print(f"{name:<11}{model.count_params(cfg.model) / 1e9:>8.2f}B{_gib(u.params):>10}{_gib(u.optimizer):>10}"
              f"{_gib(u.gradients):>10}{_gib(u.activations):>10}{_gib(u.total):>10}  {fits:<6} {where}")
    if not all(load_config(REPO / "trainer" / "configs" / f"{n}.yaml").batch_rows % (data * fsdp) == 0
               for n in CONFIGS):
        print("rows!: the batch's rows do not divide over data x fsdp on this mesh; the trainer refuses it")
    if args.check:
        check()


if __name__ == "__main__":
    main()
