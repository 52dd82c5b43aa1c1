"""The trainer's YAML config: pydantic models (extra=forbid, frozen) and a loader that names file:line."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from flanpipe.errors import SpecError, did_you_mean
from flanpipe.schema import Layout
from flanpipe.yamlio import Located, dotted, load_yaml

_STRICT = ConfigDict(extra="forbid", frozen=True)
_CROSS_FIELD = re.compile(r"^([a-z_]+(?:\.[a-z_]+)+): (.*)$", re.DOTALL)


class ModelConfig(BaseModel):
    """Transformer shape. Parameter count ~ layers * (4*d*heads*head_dim + 3*d*d_ff) + vocab*d."""

    model_config = _STRICT
    layout: Layout = Field(description="decoder_only (prefix LM, the paper's) or encoder_decoder.")
    vocab_size: int = Field(gt=1, description="Must equal the split's tokenizer vocabulary size.")
    num_layers: int = Field(gt=0, description="Transformer blocks (per stack for encoder_decoder).")
    d_model: int = Field(gt=0, description="Width of the residual stream.")
    num_heads: int = Field(gt=0, description="Attention heads.")
    head_dim: int = Field(gt=0, description="Width of each head; heads*head_dim need not equal d_model.")
    d_ff: int = Field(gt=0, description="Hidden width of the gated-GELU feed-forward layer.")
    tie_embeddings: bool = Field(description="Use the input embedding as the output projection.")
    dtype: Literal["float32", "bfloat16"] = Field(description="Activation dtype; parameters stay float32.")
    remat: bool = Field(description="Recompute each block in the backward pass (saves memory, costs ~1/3 compute).")
    rope_max_wavelength: float = Field(default=10_000.0, gt=0, description="RoPE base wavelength (HF rope_theta).")
    architecture: Literal["flan", "llama"] = Field(
        default="flan",
        description="flan: gated-GELU, unit-std embeddings (logits scaled by 1/sqrt(d) when tied); "
        "llama: SwiGLU, Hugging Face Llama's layout, so hf_llama checkpoints load and save.",
    )
    num_kv_heads: int | None = Field(
        default=None, gt=0, description="Key/value heads for grouped-query attention (null: num_heads).")
    norm_eps: float = Field(default=1e-6, gt=0, description="RMSNorm epsilon (HF rms_norm_eps).")
    prefix_lm: bool = Field(
        default=True,
        description="Inputs (decoder_causal_attention = 1) attend bidirectionally; false: fully causal, "
        "as a pretrained causal LM such as Llama was trained.",
    )

    @field_validator("head_dim", mode="after")
    @classmethod
    def _even(cls, value: int) -> int:
        if value % 2:
            raise ValueError("must be even for rotary position embeddings")
        return value

    @property
    def kv_heads(self) -> int:
        """Key/value heads (num_kv_heads, or num_heads without grouped-query attention)."""
        return self.num_kv_heads or self.num_heads

    @model_validator(mode="after")
    def _groups(self) -> ModelConfig:
        if self.num_heads % self.kv_heads:
            raise ValueError(f"model.num_kv_heads: {self.kv_heads} does not divide num_heads {self.num_heads}")
        return self


class DataConfig(BaseModel):
    """What a split must look like, and how the loader reads it."""

    model_config = _STRICT
    inputs_length: int = Field(gt=0, description="Must equal the split's lengths.inputs.")
    targets_length: int = Field(gt=0, description="Must equal the split's lengths.targets.")
    read_threads: int = Field(default=2, ge=0, description="grain threads decoding batches (0 = in the main thread).")
    prefetch_batches: int = Field(default=4, ge=0, description="Batches read ahead of the train step.")

    def sequence_length(self, layout: Layout) -> int:
        """Length of a packed decoder row (inputs + targets for decoder_only)."""
        return self.inputs_length + self.targets_length if layout == "decoder_only" else self.targets_length


class OptimizerConfig(BaseModel):
    """optax Adafactor. Defaults are the paper's fine-tuning setting (constant lr 3e-5)."""

    model_config = _STRICT
    learning_rate: float = Field(default=3e-5, gt=0, description="Peak (and, after warmup, constant) step size.")
    warmup_steps: int = Field(default=0, ge=0, description="Linear warmup from 0 to learning_rate.")
    decay_rate: float = Field(default=0.8, gt=0, description="Adafactor second-moment decay exponent.")
    clipping_threshold: float | None = Field(default=1.0, gt=0, description="Update clipping; null disables.")
    multiply_by_parameter_scale: bool = Field(
        default=False,
        description="Scale steps by each parameter's RMS. Off, so learning_rate is an absolute step (3e-5 as given).",
    )
    weight_decay: float = Field(default=0.0, ge=0, description="Decoupled weight decay rate.")


class InitFrom(BaseModel):
    """A pretrained checkpoint in another tool's format to start from."""

    model_config = _STRICT
    format: Literal["hf_llama"] = Field(description="hf_llama: a Hugging Face Llama directory (config.json + *.safetensors).")
    path: Path = Field(description="The checkpoint directory, e.g. one written by save_pretrained.")


class MeshConfig(BaseModel):
    """Device mesh: data x fsdp x tensor = the device count. Batch rows split over data and fsdp."""

    model_config = _STRICT
    data: int | None = Field(default=None, gt=0, description="Data-parallel replicas (null: devices / (fsdp*tensor)).")
    fsdp: int = Field(default=1, gt=0, description="Parameters and optimizer state sharded over this axis (ZeRO-3).")
    tensor: int = Field(default=1, gt=0, description="Megatron-style tensor parallelism (heads, d_ff, vocab).")


class TrainConfig(BaseModel):
    """Length and batch of the run, and how often it logs and checkpoints."""

    model_config = _STRICT
    steps: int = Field(gt=0, description="Optimizer steps (the paper: 30,000).")
    batch_tokens: int = Field(gt=0, description="Tokens per global batch; rows = batch_tokens // sequence length.")
    seed: int = Field(default=0, ge=0, lt=2**32, description="Seeds parameter init and the data order.")
    log_every: int = Field(default=10, gt=0, description="Steps between metrics.jsonl lines.")
    checkpoint_every: int = Field(default=1000, gt=0, description="Steps between checkpoints (the last step always).")
    keep_checkpoints: int = Field(default=3, gt=0, description="Checkpoints kept on disk.")
    eval_every: int = Field(default=0, ge=0, description="Steps between evaluations on the held-out sets (0: never).")
    init_checkpoint: Path | None = Field(
        default=None, description="Workdir of an earlier run whose latest params start this one (e.g. a pretrained LM)."
    )
    init_from: InitFrom | None = Field(
        default=None, description="A pretrained checkpoint in another format (hf_llama) whose params start this run."
    )

    @model_validator(mode="after")
    def _one_init(self) -> TrainConfig:
        if self.init_checkpoint is not None and self.init_from is not None:
            raise ValueError("train.init_from: give init_checkpoint or init_from, not both")
        return self


class EvalConfig(BaseModel):
    """Held-out evaluation: batch shape and how much of each eval set to use."""

    model_config = _STRICT
    batch_size: int = Field(default=32, gt=0, description="Sequences scored or decoded per call.")
    max_decode_length: int | None = Field(
        default=None, gt=0, description="Greedy decoding steps for generation sets (default: targets_length)."
    )
    max_examples: int | None = Field(
        default=None, gt=0, description="Use at most this many examples per (dataset, split, template); null: all."
    )


class PromptTuningConfig(BaseModel):
    """Prompt tuning (paper Section 4.5): a soft prompt trained on one dataset, the model frozen."""

    model_config = _STRICT
    prompt_length: int = Field(default=10, gt=0, description="Soft-prompt vectors prepended to the input.")
    weight_decay: float = Field(default=1e-4, ge=0, description="Adafactor decoupled weight decay on the prompt.")
    learning_rate: float = Field(default=0.3, gt=0, description="Prompt tuning's usual Adafactor rate (Lester et al.).")
    steps: int = Field(gt=0, description="Optimizer steps on the prompt.")
    batch_size: int = Field(default=32, gt=0, description="Examples (unpacked rows) per step.")
    low_resource_examples: int = Field(default=32, gt=0, description="Examples in the low-resource setting.")


class TrainerConfig(BaseModel):
    """One trainer config file: trainer/configs/<name>.yaml."""

    model_config = _STRICT
    name: str = Field(description="Shown in logs and results.")
    model: ModelConfig = Field(description="Transformer shape and layout.")
    data: DataConfig = Field(description="Lengths the split must have, and loader settings.")
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig, description="Adafactor settings.")
    train: TrainConfig = Field(description="Steps, batch, seed, logging and checkpoint cadence.")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="Held-out evaluation settings.")
    prompt_tuning: PromptTuningConfig = Field(description="Soft-prompt tuning on one held-out dataset.")
    mesh: MeshConfig = Field(default_factory=MeshConfig, description="Device mesh (default: all devices on data).")

    @property
    def sequence_length(self) -> int:
        """Length of one packed decoder row."""
        return self.data.sequence_length(self.model.layout)

    @property
    def batch_rows(self) -> int:
        """Packed rows per global batch (batch_tokens rounded down to whole rows)."""
        return self.train.batch_tokens // self.sequence_length

    @model_validator(mode="after")
    def _check(self) -> TrainerConfig:
        if self.batch_rows < 1:
            raise ValueError(
                f"train.batch_tokens: {self.train.batch_tokens} is less than one row of {self.sequence_length} tokens"
            )
        return self


def load_config(path: str | Path, overrides: Iterable[str] = ()) -> TrainerConfig:
    """Load and validate a trainer config, applying ``a.b=value`` overrides (values parsed as YAML).

    Raises:
      SpecError: naming the file, line and field, e.g. ``tiny.yaml:7: model.vocab_size: ...``.
    """
    located = load_yaml(path)
    if not isinstance(located.data, dict):
        raise SpecError(located.path, 1, None, "a trainer config must be a mapping")
    data = _apply_overrides(located.data, overrides, located.path)
    try:
        return TrainerConfig.model_validate(data)
    except ValidationError as e:
        raise _spec_error(e, located) from None


def config_from_mapping(data: Mapping[str, Any], overrides: Iterable[str] = ()) -> TrainerConfig:
    """Validate an in-memory config (e.g. one saved in a workdir), with the same overrides as load_config."""
    data = _apply_overrides(dict(data), overrides, Path("<config>"))
    try:
        return TrainerConfig.model_validate(data)
    except ValidationError as e:
        raise _spec_error(e, Located(data, Path("<config>"))) from None


def _apply_overrides(data: dict[str, Any], overrides: Iterable[str], path: Path) -> dict[str, Any]:
    out = _deep_copy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise SpecError(path, None, None, f"override {item!r} is not of the form a.b=value")
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise SpecError(path, None, key, f"override {item!r}: {part!r} is not a mapping")
            node = child
        node[parts[-1]] = yaml.safe_load(raw)
    return out


def _deep_copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value


def _spec_error(error: ValidationError, located: Located) -> SpecError:
    """First pydantic error -> SpecError(file, line, field path); unknown keys get a did-you-mean."""
    # A misspelt key shows up as both "unknown" and "missing"; the unknown one explains more.
    err = sorted(error.errors(), key=lambda e: e["type"] != "extra_forbidden")[0]
    loc = tuple(p for p in err["loc"] if isinstance(p, (str, int)))
    path, line = located.where(loc)
    if err["type"] == "extra_forbidden":
        message = f"unknown key{did_you_mean(str(loc[-1]), _fields_at(loc[:-1]))}"
    elif err["type"] == "missing":
        message = "required field is missing"
    else:
        message = err["msg"].removeprefix("Value error, ")
        cross_field = _CROSS_FIELD.match(message)
        if cross_field:  # a check across sections names its field first: "train.batch_tokens: ..."
            loc = tuple(cross_field.group(1).split("."))
            message = cross_field.group(2)
        elif not isinstance(err.get("input"), (dict, list)) and "input" in err:
            message += f", got {err['input']!r}"
    return SpecError(path, line, dotted(loc) or None, message)


def _fields_at(loc: tuple[str | int, ...]) -> list[str]:
    model: Any = TrainerConfig
    for part in loc:
        info = model.model_fields.get(part) if isinstance(part, str) else None
        if info is None or not (isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel)):
            return []
        model = info.annotation
    return list(model.model_fields)


def resolve_config(config: TrainerConfig | str | Path, overrides: Iterable[str] = ()) -> TrainerConfig:
    """A TrainerConfig from a path or an existing config, with ``a.b=value`` overrides applied."""
    if isinstance(config, TrainerConfig):
        overrides = list(overrides)
        return config_from_mapping(config.model_dump(mode="json"), overrides) if overrides else config
    return load_config(config, overrides)


def json_schema() -> dict[str, Any]:
    """JSON Schema of a trainer config file, for editor completion (docs/schemas/trainer.schema.json)."""
    schema = TrainerConfig.model_json_schema()
    schema["title"] = "flanpipe trainer config (trainer/configs/<name>.yaml)"
    return schema
