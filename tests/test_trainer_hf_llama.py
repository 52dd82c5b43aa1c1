"""trainer.hf_llama: our llama logits equal transformers', and a fine-tuned checkpoint goes back to transformers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
import pytest
import torch  # installed by .ci/run (the CPU wheel), as for the docs/consuming.md snippets
import trainer_fixtures as fx
import transformers  # the test extra
import yaml
from typer.testing import CliRunner

from flanpipe.errors import OutputError, SpecError
from trainer import checkpoint, data, hf_llama, model
from trainer.__main__ import app
from trainer.config import ModelConfig, load_config
from trainer.train import train


# float32 on CPU; measured max |ours - transformers| ~8e-6 (initializer_range 0.2 gives logits of a few units).
LOGIT_TOLERANCE = 1e-4


def make_llama(directory: Path, *, vocab: int = fx.VOCAB, kv_heads: int = 2, tied: bool = False, seed: int = 0) -> Path:
    """A tiny random LlamaForCausalLM saved with save_pretrained (weights large enough to give varied logits)."""
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=kv_heads, head_dim=16, rms_norm_eps=1e-5, tie_word_embeddings=tied,
        max_position_embeddings=128, rope_theta=10_000.0, initializer_range=0.2,
    )
    transformers.LlamaForCausalLM(config).save_pretrained(directory)
    return directory


def model_config(directory: Path) -> ModelConfig:
    return ModelConfig(**hf_llama.model_fields(hf_llama.read_config(directory)), dtype="float32", remat=False)


def packed_batch(vocab: int, segments: list[list[int]], length: int = 32, seed: int = 0) -> tuple[dict, list]:
    """Rows packed with random-token segments of the given lengths; returns the batch and (row, start, tokens)."""
    rng = np.random.default_rng(seed)
    shape = (len(segments), length)
    tokens, segment_ids, positions = np.zeros(shape, np.int32), np.zeros(shape, np.int32), np.zeros(shape, np.int32)
    pieces = []
    for row, lengths in enumerate(segments):
        start = 0
        for number, n in enumerate(lengths, start=1):
            piece = rng.integers(3, vocab, n).astype(np.int32)
            tokens[row, start : start + n], segment_ids[row, start : start + n] = piece, number
            positions[row, start : start + n] = np.arange(n)
            pieces.append((row, start, piece))
            start += n
    batch = {"decoder_input_tokens": tokens, "decoder_target_tokens": tokens, "decoder_segment_ids": segment_ids,
             "decoder_positions": positions, "decoder_causal_attention": (segment_ids > 0).astype(np.int32),
             "decoder_loss_weights": (segment_ids > 0).astype(np.int32)}
    return {k: jnp.asarray(v) for k, v in batch.items()}, pieces


def hf_logits(hf_model: Any, tokens: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return hf_model(torch.tensor(tokens[None], dtype=torch.long)).logits[0].numpy()


def max_packed_diff(params: Any, config: ModelConfig, hf_model: Any, segments: list[list[int]]) -> float:
    """Largest |ours - transformers| over every packed example (each one alone through transformers)."""
    batch, pieces = packed_batch(config.vocab_size, segments)
    ours = np.asarray(model.logits(params, batch, config))
    return max(float(np.abs(ours[r, s : s + len(t)] - hf_logits(hf_model, t)).max()) for r, s, t in pieces)


@pytest.mark.parametrize(("kv_heads", "tied"), [(2, False), (4, True)], ids=["gqa-untied", "mha-tied"])
def test_logits_on_a_packed_batch_equal_transformers(tmp_path: Path, kv_heads: int, tied: bool) -> None:
    directory = make_llama(tmp_path / "llama", kv_heads=kv_heads, tied=tied)
    config = model_config(directory)
    assert (config.kv_heads, config.tie_embeddings, config.prefix_lm) == (kv_heads, tied, False)
    hf_model = transformers.LlamaForCausalLM.from_pretrained(directory).eval()
    diff = max_packed_diff(hf_llama.load_params(directory, config), config, hf_model, [[5, 11, 16], [9, 20, 3]])
    print(f"{kv_heads} kv heads, tied={tied}: max |logit diff| on packed rows = {diff:.2e}")
    assert diff <= LOGIT_TOLERANCE


def llama_overrides(directory: Path) -> list[str]:
    """tiny.yaml turned into the checkpoint's architecture, started from it."""
    section = yaml.safe_load(hf_llama.model_section(directory))["model"]
    return [f"model.{k}={json.dumps(v)}" for k, v in section.items()] + [
        f"train.init_from={json.dumps({'format': 'hf_llama', 'path': str(directory)})}",
        "train.steps=3", "train.log_every=1", "train.checkpoint_every=3", "optimizer.learning_rate=0.01",
        "optimizer.warmup_steps=0",
    ]


def test_fine_tuned_checkpoint_exports_and_loads_back_in_transformers(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    split = fx.shared_split(tmp_path_factory)
    source = make_llama(tmp_path / "llama")
    (source / "tokenizer.json").write_text('{"stand-in": true}')  # tokenizer files travel with the export
    overrides = llama_overrides(source)
    result = train(split, fx.TINY_CONFIG, tmp_path / "run", overrides=overrides, progress=False)
    assert result.final_step == 3 and result.losses[3] < result.losses[1]

    out = tmp_path / "export"
    cli = CliRunner().invoke(app, ["export", "--config", str(fx.TINY_CONFIG), "--workdir", str(tmp_path / "run"),
                                   "--out", str(out), *[a for o in overrides for a in ("--set", o)]])
    assert cli.exit_code == 0, cli.output
    manifest = hf_llama.ExportManifest.model_validate_json((out / "flanpipe_export.json").read_text())
    assert manifest.step == 3 and set(manifest.files) == {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json"}
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".export")]  # no temp dir left behind

    cfg = load_config(fx.TINY_CONFIG, overrides)
    tuned, _ = checkpoint.load_params(tmp_path / "run", cfg, data.make_mesh())
    reloaded = transformers.LlamaForCausalLM.from_pretrained(out).eval()
    segments = [[7, 12], [20]]
    diff = max_packed_diff(tuned, cfg.model, reloaded, segments)
    original = transformers.LlamaForCausalLM.from_pretrained(source).eval()
    moved = max_packed_diff(tuned, cfg.model, original, segments)
    print(f"exported vs ours: {diff:.2e}; fine-tuning moved logits by up to {moved:.2f}")
    assert diff <= LOGIT_TOLERANCE and moved > 100 * LOGIT_TOLERANCE
    assert json.loads((out / "config.json").read_text())["eos_token_id"] == 2  # the base's config is kept

    again = CliRunner().invoke(app, ["export", "--config", str(fx.TINY_CONFIG), "--workdir", str(tmp_path / "run"),
                                     "--out", str(out), *[a for o in overrides for a in ("--set", o)]])
    assert isinstance(again.exception, OutputError) and "exists and is not empty" in str(again.exception)


def test_hf_config_command_prints_a_model_section_that_validates(tmp_path: Path) -> None:
    directory = make_llama(tmp_path / "llama")
    cli = CliRunner().invoke(app, ["hf-config", str(directory)])
    assert cli.exit_code == 0, cli.output
    config = ModelConfig(**yaml.safe_load(cli.output)["model"])
    assert (config.architecture, config.num_kv_heads, config.d_ff, config.norm_eps) == ("llama", 2, 96, 1e-5)
    hf_llama.check_model(config, directory)  # no error


def test_a_model_section_that_differs_from_the_checkpoint_is_refused(tmp_path: Path) -> None:
    directory = make_llama(tmp_path / "llama")
    config = model_config(directory).model_copy(update={"d_ff": 128})
    with pytest.raises(SpecError, match=r"model\.d_ff: is 128 but .*config\.json implies 96; .*hf-config"):
        hf_llama.check_model(config, directory, "cfg.yaml")


def test_unsupported_or_broken_checkpoints_are_refused(tmp_path: Path) -> None:
    directory = make_llama(tmp_path / "llama")
    config = model_config(directory)
    hf = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**hf, "attention_bias": True}))
    with pytest.raises(OutputError, match=r"config\.json: attention_bias: true is not supported"):
        hf_llama.read_config(directory)
    (directory / "config.json").write_text(json.dumps(hf))
    with pytest.raises(OutputError, match=r"tensor model\.embed_tokens\.weight has shape \(128, 64\), the config implies \(128, 32\)"):
        hf_llama.load_params(directory, config.model_copy(update={"d_model": 32}))
    with pytest.raises(OutputError, match=r"no config\.json|not found"):
        hf_llama.read_config(tmp_path)
