"""Hugging Face Llama checkpoints (config.json + *.safetensors) <-> the trainer's parameter tree (architecture: llama).

Read and written with the ``safetensors`` library's numpy API, so no torch is needed. HF
stores each projection as [out, in] per layer; the trainer keeps [in, heads, head_dim]
stacked over layers. Both use rotate-half rotary embeddings, so q/k need no permutation.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import jax
import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field
from safetensors import safe_open
from safetensors.numpy import save_file

from flanpipe.errors import OutputError, SpecError
from trainer import checkpoint, model, sharding
from trainer.config import ModelConfig, TrainerConfig, resolve_config

Params = dict[str, Any]
_PREFIX = "model.layers.{i}."
# Files of the source checkpoint that an export keeps (the tokenizer and generation defaults).
_COPIED = ("generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
           "tokenizer.model")


def read_config(path: str | Path) -> dict[str, Any]:
    """DIR/config.json as a dict, refusing what the trainer's llama layout cannot represent.

    Raises:
      OutputError: no config.json, or a feature this layout lacks (biases, rope scaling, another model_type).
    """
    file = Path(path) / "config.json"
    if not file.is_file():
        raise OutputError(f"{file}: not found; train.init_from.path must be a save_pretrained directory")
    hf = json.loads(file.read_text())
    if hf.get("model_type") not in ("llama", "mistral"):
        raise OutputError(f"{file}: model_type: expected llama (or mistral), got {hf.get('model_type')!r}")
    for key in ("attention_bias", "mlp_bias"):
        if hf.get(key):
            raise OutputError(f"{file}: {key}: true is not supported (the llama layout has no biases)")
    if hf.get("hidden_act", "silu") != "silu":
        raise OutputError(f"{file}: hidden_act: expected silu, got {hf['hidden_act']!r}")
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        raise OutputError(f"{file}: rope scaling {rope!r} is not supported (only rope_type default)")
    if hf.get("sliding_window") and hf.get("use_sliding_window", hf.get("model_type") == "mistral"):
        raise OutputError(f"{file}: sliding_window attention is not supported")
    return hf


def model_fields(hf: Mapping[str, Any]) -> dict[str, Any]:
    """The ModelConfig fields (architecture: llama) that a HF Llama config.json implies."""
    heads = hf["num_attention_heads"]
    rope = hf.get("rope_parameters") or {}
    return {
        "architecture": "llama",
        "layout": "decoder_only",
        "prefix_lm": False,
        "vocab_size": hf["vocab_size"],
        "num_layers": hf["num_hidden_layers"],
        "d_model": hf["hidden_size"],
        "num_heads": heads,
        "num_kv_heads": hf.get("num_key_value_heads") or heads,
        "head_dim": hf.get("head_dim") or hf["hidden_size"] // heads,
        "d_ff": hf["intermediate_size"],
        "tie_embeddings": bool(hf.get("tie_word_embeddings", False)),
        "norm_eps": float(hf.get("rms_norm_eps", 1e-6)),
        "rope_max_wavelength": float(rope.get("rope_theta", hf.get("rope_theta", 10_000.0))),
    }


def check_model(config: ModelConfig, path: str | Path, where: str | Path = "<config>") -> None:
    """Refuse a model config that differs from the checkpoint's (the field, both values and the fix).

    Raises:
      SpecError: naming ``model.<field>``.
    """
    expected = model_fields(read_config(path))
    ours = config.model_dump()
    ours["num_kv_heads"] = config.kv_heads
    for key, value in expected.items():
        if key == "prefix_lm":
            continue  # attention over the input part is the fine-tuner's choice
        if ours[key] != value:
            raise SpecError(where, None, f"model.{key}",
                            f"is {ours[key]!r} but {Path(path) / 'config.json'} implies {value!r}; "
                            f"`python -m trainer hf-config {path}` prints the matching model section")


def load_params(path: str | Path, config: ModelConfig) -> Params:
    """Float32 numpy parameters in the trainer's layout from DIR/*.safetensors (sharded files too).

    Raises:
      OutputError: no safetensors file, or a tensor missing or of the wrong shape.
    """
    files = sorted(Path(path).glob("*.safetensors"))
    if not files:
        raise OutputError(f"{path}: no *.safetensors file (save with save_pretrained(..., safe_serialization=True))")
    tensors: dict[str, np.ndarray] = {}
    for file in files:
        # framework="flax" reads bfloat16 too; each tensor goes to float32 numpy at once.
        with safe_open(str(file), framework="flax") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open has no __iter__)
                tensors[name] = np.asarray(f.get_tensor(name), dtype=np.float32)

    def take(name: str, shape: tuple[int, ...]) -> np.ndarray:
        if name not in tensors:
            raise OutputError(f"{path}: tensor {name} missing from {', '.join(f.name for f in files)}")
        if tensors[name].shape != shape:
            raise OutputError(f"{path}: tensor {name} has shape {tensors[name].shape}, the config implies {shape}")
        return tensors.pop(name)

    n, d, h, g, e, f = (config.num_layers, config.d_model, config.num_heads, config.kv_heads, config.head_dim,
                        config.d_ff)

    def layers(name: str, shape: tuple[int, ...]) -> np.ndarray:
        return np.stack([take(_PREFIX.format(i=i) + name, shape) for i in range(n)])

    params: Params = {
        "embed": take("model.embed_tokens.weight", (config.vocab_size, d)),
        "decoder_norm": take("model.norm.weight", (d,)),
        "decoder": {
            "attn_norm": layers("input_layernorm.weight", (d,)),
            "mlp_norm": layers("post_attention_layernorm.weight", (d,)),
            "attn": {
                "q": layers("self_attn.q_proj.weight", (h * e, d)).transpose(0, 2, 1).reshape(n, d, h, e),
                "k": layers("self_attn.k_proj.weight", (g * e, d)).transpose(0, 2, 1).reshape(n, d, g, e),
                "v": layers("self_attn.v_proj.weight", (g * e, d)).transpose(0, 2, 1).reshape(n, d, g, e),
                "o": layers("self_attn.o_proj.weight", (d, h * e)).transpose(0, 2, 1).reshape(n, h, e, d),
            },
            "mlp": {
                "gate": layers("mlp.gate_proj.weight", (f, d)).transpose(0, 2, 1),
                "up": layers("mlp.up_proj.weight", (f, d)).transpose(0, 2, 1),
                "down": layers("mlp.down_proj.weight", (d, f)).transpose(0, 2, 1),
            },
        },
    }
    if not config.tie_embeddings:
        params["unembed"] = take("lm_head.weight", (config.vocab_size, d)).T
    tensors.pop("lm_head.weight", None)  # some tied checkpoints store the copy anyway
    tensors = {k: v for k, v in tensors.items() if not k.endswith("rotary_emb.inv_freq")}
    if tensors:
        raise OutputError(f"{path}: tensors the llama layout does not use: {', '.join(sorted(tensors)[:5])}")
    return params


def hf_tensors(params: Params, config: ModelConfig) -> dict[str, np.ndarray]:
    """The trainer's parameters as HF Llama state-dict tensors (float32, [out, in])."""
    p = jax.tree.map(lambda a: np.asarray(jax.device_get(a), dtype=np.float32), params)
    n, d = config.num_layers, config.d_model
    attn, mlp = p["decoder"]["attn"], p["decoder"]["mlp"]
    out = {"model.embed_tokens.weight": p["embed"], "model.norm.weight": p["decoder_norm"]}
    for i in range(n):
        pre = _PREFIX.format(i=i)
        out[pre + "input_layernorm.weight"] = p["decoder"]["attn_norm"][i]
        out[pre + "post_attention_layernorm.weight"] = p["decoder"]["mlp_norm"][i]
        for name in ("q", "k", "v"):
            out[pre + f"self_attn.{name}_proj.weight"] = attn[name][i].reshape(d, -1).T
        out[pre + "self_attn.o_proj.weight"] = attn["o"][i].reshape(-1, d).T
        for name in ("gate", "up", "down"):
            out[pre + f"mlp.{name}_proj.weight"] = mlp[name][i].T
    if not config.tie_embeddings:
        out["lm_head.weight"] = p["unembed"].T
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def hf_config(config: ModelConfig, base: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A LlamaForCausalLM config.json for ``config``: ``base`` (the source checkpoint's) with the shape fields set."""
    out = dict(base or {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
                        "attention_bias": False, "mlp_bias": False, "attention_dropout": 0.0,
                        "max_position_embeddings": 4096, "initializer_range": 0.02})
    out.update({
        "vocab_size": config.vocab_size, "num_hidden_layers": config.num_layers, "hidden_size": config.d_model,
        "num_attention_heads": config.num_heads, "num_key_value_heads": config.kv_heads,
        "head_dim": config.head_dim, "intermediate_size": config.d_ff, "rms_norm_eps": config.norm_eps,
        "tie_word_embeddings": config.tie_embeddings, "dtype": "float32",
    })
    out.pop("torch_dtype", None)
    if "rope_parameters" in out or base is None:
        out["rope_parameters"] = {**(out.get("rope_parameters") or {}), "rope_type": "default",
                                  "rope_theta": config.rope_max_wavelength}
        out.pop("rope_theta", None)
    else:
        out["rope_theta"] = config.rope_max_wavelength
    return out


class ExportManifest(BaseModel):
    """OUT/flanpipe_export.json: where an exported checkpoint came from and the sha256 of every file."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    format: Literal["hf_llama"] = Field(description="The export format.")
    source: str = Field(description="The run's workdir, or <params> for parameters passed in directly.")
    step: int | None = Field(description="The checkpoint step exported (null: not from a checkpoint).")
    base: str | None = Field(description="The hf_llama checkpoint the run started from (its config and tokenizer kept).")
    files: dict[str, str] = Field(description="File name -> sha256 of its bytes.")


def save(params: Params, config: ModelConfig, out: str | Path, *, base: str | Path | None = None,
         source: str = "<params>", step: int | None = None) -> Path:
    """Write OUT/config.json + OUT/model.safetensors (float32) that ``LlamaForCausalLM.from_pretrained`` loads.

    ``base``: the checkpoint the run started from; its config.json (special token ids,
    max_position_embeddings, ...) is kept with the shape fields set from ``config``, and its
    tokenizer files are copied. Everything is written to a temporary sibling directory that is
    renamed to OUT when complete, with OUT/flanpipe_export.json listing every file's sha256.

    Raises:
      SpecError: the model is not architecture llama.
      OutputError: OUT exists and is not empty.
    """
    if config.architecture != "llama" or config.layout != "decoder_only":
        raise SpecError("<config>", None, "model.architecture",
                        "only architecture: llama (decoder_only) models export to hf_llama")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise OutputError(f"{out}: exists and is not empty; export into a new directory")
    source_config = read_config(base) if base is not None else None
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent if out.parent.exists() else None))
    try:
        save_file(hf_tensors(params, config), str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(hf_config(config, source_config), indent=2, sort_keys=True) + "\n")
        for name in _COPIED:
            if base is not None and (Path(base) / name).is_file():
                shutil.copyfile(Path(base) / name, tmp / name)
        files = {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(tmp.iterdir())}
        manifest = ExportManifest(format="hf_llama", source=source, step=step,
                                  base=str(base) if base is not None else None, files=files)
        (tmp / "flanpipe_export.json").write_text(manifest.model_dump_json(indent=2) + "\n")
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.exists():
            out.rmdir()  # empty, checked above
        tmp.replace(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def model_section(path: str | Path) -> str:
    """The trainer config's ``model:`` section (YAML) for a hf_llama checkpoint directory."""
    fields = {**model_fields(read_config(path)), "dtype": "float32", "remat": False}
    return yaml.safe_dump({"model": fields}, sort_keys=False)


def export(
    workdir: str | Path, config: TrainerConfig | str | Path, out: str | Path, *, step: int | None = None,
    overrides: Iterable[str] = (),
) -> Path:
    """Export a run's checkpoint (latest unless ``step``) as a hf_llama directory (see ``save``).

    Parameters restore sharded on the config's mesh, then are gathered to the host one leaf
    at a time as they are written.
    """
    cfg = resolve_config(config, overrides)
    mesh = sharding.make_mesh(cfg.mesh)
    sizes = dict(zip(mesh.axis_names, mesh.devices.shape))
    shardings = sharding.named(mesh, sharding.param_specs(model.param_shapes(cfg.model), sizes))
    params, chosen = checkpoint.load_params(Path(workdir), cfg, mesh, step=step, shardings=shardings)
    base = cfg.train.init_from.path if cfg.train.init_from is not None else None
    return save(params, cfg.model, out, base=base, source=str(workdir), step=chosen)
