"""trainer.model: packed examples stay apart, positions restart, prefix-LM masking, loss weights, paper-scale sizes."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import trainer_fixtures as fx

from flanpipe.schema import RecordLayout
from trainer import model
from trainer.config import load_config

CONFIGS = Path(__file__).resolve().parent.parent / "trainer" / "configs"
TINY = load_config(CONFIGS / "tiny.yaml")
A = ([5, 6, 7, 8, 9, 1], [10, 11, 1])
B = ([12, 13, 14, 1], [15, 16, 17, 1])


def _batch(segment_lists: list[list[tuple[list[int], list[int]]]], layout: str = "decoder_only") -> dict:
    rows = [fx.pack(segments, RecordLayout(layout, 16, 8))[0] for segments in segment_lists]  # type: ignore[arg-type]
    return {k: jnp.asarray(np.stack([r[k] for r in rows]), jnp.int32) for k in rows[0]}


@pytest.fixture(scope="module")
def params() -> model.Params:
    return jax.jit(model.init_params, static_argnums=0)(TINY.model, jax.random.key(0))


# Jitted once per config: eager op-by-op dispatch would compile every primitive separately.
_jit_logits = jax.jit(model.logits, static_argnums=2)
_jit_loss = jax.jit(model.loss_fn, static_argnums=2)


def _logits(params: model.Params, batch: dict, config=TINY.model, soft_prompt=None) -> np.ndarray:
    return np.asarray(_jit_logits(params, batch, config, soft_prompt))


def test_packed_examples_do_not_attend_to_each_other_and_positions_restart(params: model.Params) -> None:
    alone = _logits(params, _batch([[A], [B]]))
    b_changed = (B[0][:2] + [20, 1], B[1])
    packed = _logits(params, _batch([[A, B], [A, b_changed]]))
    n, m = len(A[0]) + len(A[1]), len(B[0]) + len(B[1])
    np.testing.assert_allclose(packed[0, :n], alone[0, :n], atol=1e-5)  # packing B next to A changes nothing for A
    np.testing.assert_allclose(packed[1, :n], alone[0, :n], atol=1e-5)
    # B placed after A (its positions restarted) gives the same outputs as B alone.
    np.testing.assert_allclose(packed[0, n : n + m], alone[1, :m], atol=1e-5)


def test_prefix_is_bidirectional_and_targets_are_causal(params: model.Params) -> None:
    base, later_input = _logits(params, _batch([[A], [(A[0][:4] + [30, 1], A[1])]]))
    assert not np.allclose(base[0], later_input[0], atol=1e-5)  # position 0 sees a later prefix token
    _, later_target = _logits(params, _batch([[A], [(A[0], [10, 31, 1])]]))
    k = len(A[0]) + 1  # input-row position of the first target token
    np.testing.assert_allclose(base[: k + 1], later_target[: k + 1], atol=1e-5)
    assert not np.allclose(base[k + 1], later_target[k + 1], atol=1e-5)


def test_loss_counts_only_weighted_positions(params: model.Params) -> None:
    batch = _batch([[A, B], [B]])
    loss, aux = _jit_loss(params, batch, TINY.model)
    assert float(aux["target_tokens"]) == len(A[1]) + 2 * len(B[1])
    unweighted = batch["decoder_loss_weights"] == 0
    changed = dict(batch, decoder_target_tokens=jnp.where(unweighted, 3, batch["decoder_target_tokens"]))
    np.testing.assert_allclose(float(_jit_loss(params, changed, TINY.model)[0]), float(loss), rtol=1e-6)
    assert 3.0 < float(loss) < 7.0  # about ln(128) = 4.85 at init


def test_encoder_decoder_keeps_packed_examples_apart() -> None:
    config = load_config(CONFIGS / "tiny.yaml", ["model.layout=encoder_decoder"]).model
    p = jax.jit(model.init_params, static_argnums=0)(config, jax.random.key(1))
    alone = _logits(p, _batch([[A], [A]], "encoder_decoder"), config)
    packed = _logits(p, _batch([[A, B], [A, ([12, 40, 1], [41, 1])]], "encoder_decoder"), config)
    np.testing.assert_allclose(packed[:, : len(A[1])], alone[:, : len(A[1])], atol=1e-5)
    loss, aux = _jit_loss(p, _batch([[A, B], [A]], "encoder_decoder"), config)
    assert float(aux["target_tokens"]) == 2 * len(A[1]) + len(B[1]) and np.isfinite(float(loss))


def test_soft_prompt_replaces_the_first_positions(params: model.Params) -> None:
    batch = _batch([[A], [B]])
    embedded = params["embed"][batch["decoder_input_tokens"][0, :3]]  # row 0's own first three tokens
    plain = _logits(params, batch)
    np.testing.assert_allclose(_logits(params, batch, soft_prompt=embedded)[0], plain[0], atol=1e-5)
    assert not np.allclose(_logits(params, batch, soft_prompt=embedded + 1.0)[0], plain[0], atol=1e-3)


@pytest.mark.parametrize(
    ("name", "nominal"), [("422m", 422e6), ("2b", 2e9), ("8b", 8e9), ("68b", 68e9), ("137b", 137e9)]
)
def test_paper_scale_configs_are_valid_and_have_their_size(name: str, nominal: float) -> None:
    config = load_config(CONFIGS / f"flan_{name}.yaml")
    assert config.optimizer.learning_rate == 3e-5 and config.train.steps == 30_000
    assert (config.data.inputs_length, config.data.targets_length) == (1024, 256)
    assert abs(model.count_params(config.model) / nominal - 1) < 0.05  # shapes only, nothing allocated


def test_tiny_model_size() -> None:
    assert model.count_params(TINY.model) < 200_000
