"""trainer.sharding: logical-axis rules, and on 8 simulated devices the same training on every mesh."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import jax
import pytest
import trainer_fixtures as fx
from jax.sharding import PartitionSpec as P

from flanpipe.errors import SpecError
from trainer import model, sharding
from trainer.config import MeshConfig, load_config
from trainer.train import make_optimizer

MESHES = [(8, 1, 1), (2, 4, 1), (2, 2, 2)]
# Same global batches on every mesh; only the order of float32 reductions differs (measured ~1e-6).
LOSS_TOLERANCE = 1e-4


def test_rules_shard_width_over_fsdp_and_heads_mlp_vocab_over_tensor() -> None:
    cfg = load_config(fx.TINY_CONFIG)
    shapes = model.param_shapes(cfg.model)
    specs = sharding.param_specs(shapes, {"data": 1, "fsdp": 2, "tensor": 2})
    assert specs["embed"] == P("tensor", "fsdp")
    attn, mlp = specs["decoder"]["attn"], specs["decoder"]["mlp"]
    assert (attn["q"], attn["o"]) == (P(None, "fsdp", "tensor", None), P(None, "tensor", None, "fsdp"))
    assert (mlp["gate"], mlp["down"]) == (P(None, "fsdp", "tensor"), P(None, "tensor", "fsdp"))
    assert specs["decoder"]["attn_norm"] == P()  # norms stay replicated
    # An axis that does not divide the dimension is not used for it (heads=4 over tensor=8).
    assert sharding.param_specs(shapes, {"tensor": 8})["decoder"]["attn"]["q"] == P(None, None, None, None)


def test_factored_adafactor_state_follows_its_parameter() -> None:
    # d_model 128 so that optax factors the [vocab 128, d 128] embedding and the [2, 128, 256] gate.
    cfg = load_config(fx.TINY_CONFIG, ["model.d_model=128"])
    params = model.param_shapes(cfg.model)
    opt = jax.eval_shape(make_optimizer(cfg.optimizer).init, params)
    sizes = {"data": 1, "fsdp": 2, "tensor": 2}
    specs = sharding.optimizer_specs(opt, params, sizes)
    spec_leaves = jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, P))
    found = {jax.tree_util.keystr(path): (tuple(leaf.shape), spec)
             for (path, leaf), spec in zip(jax.tree_util.tree_leaves_with_path(opt), spec_leaves, strict=True)}
    # The row factor drops the largest dimension, the column factor the second largest (optax's order),
    # each keeping the sharding of the dimensions that remain, even when both are 128 long.
    assert found["[0].v_row['decoder']['mlp']['gate']"] == ((2, 128), P(None, "fsdp"))
    assert found["[0].v_col['decoder']['mlp']['gate']"] == ((2, 256), P(None, "tensor"))
    assert found["[0].v_row['embed']"] == ((128,), P("tensor"))
    assert found["[0].v_col['embed']"] == ((128,), P("fsdp"))
    state = sharding.per_device_bytes(opt, specs, sizes)
    assert state < sharding.per_device_bytes(opt, sharding.optimizer_specs(opt, params, {}), {}) / 3


def test_a_mesh_that_does_not_cover_the_devices_is_refused() -> None:
    with pytest.raises(SpecError, match=r"cfg\.yaml: mesh: data x fsdp x tensor = 2x4x2 does not equal the 8 devices"):
        sharding.mesh_shape(MeshConfig(data=2, fsdp=4, tensor=2), 8, where="cfg.yaml")
    assert sharding.mesh_shape(MeshConfig(fsdp=2, tensor=2), 8) == {"data": 2, "fsdp": 2, "tensor": 2}


_PROBE = r'''
import json, sys
from pathlib import Path
import jax, jax.numpy as jnp, numpy as np
from trainer import checkpoint, data, model, sharding
from trainer.config import load_config
from trainer.train import make_optimizer, state_shardings, train, train_step

split, config, root = sys.argv[1], sys.argv[2], Path(sys.argv[3])
base = ["train.steps=5", "train.log_every=1", "train.checkpoint_every=5"]
mesh_args = lambda m: [f"mesh.data={m[0]}", f"mesh.fsdp={m[1]}", f"mesh.tensor={m[2]}"]
meshes = [tuple(m) for m in json.loads(sys.argv[4])]
out = {"devices": jax.device_count(), "losses": {}, "bytes": {}}
for m in meshes:
    r = train(split, config, root / ("run_%d%d%d" % m), overrides=base + mesh_args(m), progress=False)
    out["losses"]["%d%d%d" % m] = [r.losses[s] for s in range(1, 6)]
    # Per-device parameter + optimizer bytes, as XLA compiled the step (arguments minus the batch).
    cfg = load_config(config, base + mesh_args(m))
    mesh = sharding.make_mesh(cfg.mesh)
    psh, osh = state_shardings(cfg, mesh)
    pshapes = model.param_shapes(cfg.model)
    oshapes = jax.eval_shape(make_optimizer(cfg.optimizer).init, pshapes)
    like = lambda t, s: jax.tree.map(lambda x, y: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=y), t, s)
    batch = {k: jax.ShapeDtypeStruct((cfg.batch_rows, cfg.sequence_length), jnp.int32, sharding=data.batch_sharding(mesh))
             for k in ("decoder_input_tokens", "decoder_target_tokens", "decoder_segment_ids", "decoder_positions",
                       "decoder_causal_attention", "decoder_loss_weights")}
    with jax.set_mesh(mesh):
        compiled = train_step.lower(like(pshapes, psh), like(oshapes, osh), batch, model_config=cfg.model,
                                    optimizer_config=cfg.optimizer).compile()
    batch_bytes = 6 * 4 * cfg.batch_rows * cfg.sequence_length // (m[0] * m[1])
    sizes = dict(zip(mesh.axis_names, mesh.devices.shape))
    planned = (sharding.per_device_bytes(pshapes, sharding.param_specs(pshapes, sizes), sizes)
               + sharding.per_device_bytes(oshapes, sharding.optimizer_specs(oshapes, pshapes, sizes), sizes))
    out["bytes"]["%d%d%d" % m] = [compiled.memory_analysis().argument_size_in_bytes - batch_bytes, planned]

# Restore across meshes: the (2,4,1) run's final parameters restored sharded on every mesh.
first = meshes[1]
restored = {}
for m in meshes:
    cfg = load_config(config, base + mesh_args(m))
    mesh = sharding.make_mesh(cfg.mesh)
    psh, _ = state_shardings(cfg, mesh)
    params, _ = checkpoint.load_params(root / ("run_%d%d%d" % first), cfg, mesh, shardings=psh)
    assert params["embed"].sharding == psh["embed"], (params["embed"].sharding, psh["embed"])
    restored["%d%d%d" % m] = jax.tree.map(np.asarray, params)
ref = restored["%d%d%d" % first]
out["restore_max_diff"] = max(float(np.abs(a - b).max()) for other in restored.values()
                              for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(other)))
# Resume across meshes: the (2,2,2) run's step-3 checkpoint continued on (8,1,1).
short = ["train.steps=3", "train.log_every=1", "train.checkpoint_every=3"]
train(split, config, root / "moved", overrides=short + mesh_args(meshes[2]), progress=False)
r = train(split, config, root / "moved", overrides=base + mesh_args(meshes[0]), progress=False)
out["resumed"] = [r.start_step, [r.losses[s] for s in (4, 5)]]
print(json.dumps(out))
'''


def test_meshes_agree_on_losses_restores_and_shrink_state_per_device(tmp_path_factory: pytest.TempPathFactory) -> None:
    split = fx.shared_split(tmp_path_factory)
    root = tmp_path_factory.mktemp("meshes")
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    run = subprocess.run([sys.executable, "-c", _PROBE, str(split), str(fx.TINY_CONFIG), str(root), json.dumps(MESHES)],
                         env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["devices"] == 8
    losses = out["losses"]
    reference = losses["811"]
    diff = max(abs(a - b) for other in losses.values() for a, b in zip(reference, other))
    print(f"losses over 5 steps on {sorted(losses)}: max |diff| = {diff:.2e}")
    assert diff <= LOSS_TOLERANCE and reference[4] < reference[0]

    assert out["restore_max_diff"] == 0.0  # the same checkpoint, restored into three different shardings
    start, resumed = out["resumed"]
    assert start == 3 and max(abs(a - b) for a, b in zip(resumed, reference[3:])) <= LOSS_TOLERANCE

    compiled = {k: v[0] for k, v in out["bytes"].items()}
    print("per-device params+optimizer bytes (compiled, planned):", out["bytes"])
    for name, (measured, planned) in out["bytes"].items():
        assert abs(measured - planned) <= 0.01 * planned, name  # XLA's figure is what the rules predict
    # fsdp x tensor = 4 on both model-parallel meshes; norms and scalars stay replicated, so slightly above 1/4.
    for name in ("241", "222"):
        assert 0.25 <= compiled[name] / compiled["811"] <= 0.26


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_hosts_of_four_devices_train_like_one_of_eight(tmp_path_factory: pytest.TempPathFactory) -> None:
    """`python -m trainer --coordinator ... train` in two processes (gloo on CPU) = one process, same mesh."""
    split = fx.shared_split(tmp_path_factory)
    root = tmp_path_factory.mktemp("hosts")
    args = ["train", "--data", str(split), "--config", str(fx.TINY_CONFIG), "--quiet",
            *[a for o in ("train.steps=4", "train.log_every=1", "train.checkpoint_every=4", "mesh.fsdp=2",
                          "mesh.tensor=2") for a in ("--set", o)]]
    port = _free_port()
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=4")
    hosts = [subprocess.Popen([sys.executable, "-m", "trainer", "--coordinator", f"localhost:{port}",
                               "--num-processes", "2", "--process-id", str(i), *args, "--workdir", str(root / "two")],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outputs = [h.communicate(timeout=600) for h in hosts]
    assert all(h.returncode == 0 for h in hosts), [err[-2000:] for _, err in outputs]
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    subprocess.run([sys.executable, "-m", "trainer", *args, "--workdir", str(root / "one")], env=env, check=True,
                   capture_output=True)

    def losses(workdir: str) -> list[float]:
        return [json.loads(line)["loss"] for line in (root / workdir / "metrics.jsonl").read_text().splitlines()]

    assert len(losses("two")) == 4 and losses("two") == losses("one")  # bit-identical: the same program
    assert sorted(p.name for p in (root / "two" / "checkpoints").iterdir() if p.name.isdigit()) == ["4"]
