"""trainer.config: strict YAML configs whose errors name file, line and field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from flanpipe.errors import SpecError
from trainer.config import TrainerConfig, json_schema, load_config, resolve_config

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "trainer" / "configs"


def test_every_shipped_config_loads() -> None:
    names = sorted(p.stem for p in CONFIGS.glob("*.yaml"))
    assert names == ["flan2021_cpu", "flan_137b", "flan_2b", "flan_422m", "flan_68b", "flan_8b", "llama_tiny", "tiny"]
    for name in names:
        config = load_config(CONFIGS / f"{name}.yaml")
        assert config.name == name and config.prompt_tuning.prompt_length == 10
        assert config.prompt_tuning.weight_decay == 1e-4


def test_cpu_config_matches_the_bundled_flan2021_splits() -> None:
    from flanpipe.spec import load_pipeline
    from flanpipe.tokenizer import DEFAULT_MODEL, Tokenizer

    config = load_config(CONFIGS / "flan2021_cpu.yaml")
    pipeline, _ = load_pipeline(Path(__file__).resolve().parent.parent / "pipelines" / "flan2021.yaml")
    assert config.model.vocab_size == Tokenizer.from_file(DEFAULT_MODEL).vocab_size
    assert (config.data.inputs_length, config.data.targets_length) == (pipeline.lengths.inputs,
                                                                       pipeline.lengths.targets)


def test_defaults_are_the_papers() -> None:
    config = load_config(CONFIGS / "flan_137b.yaml")
    assert config.optimizer.learning_rate == 3e-5 and config.train.batch_tokens == 8192
    assert config.batch_rows == 6 and config.sequence_length == 1280


def test_unknown_key_names_line_and_suggests(tmp_path: Path) -> None:
    text = (CONFIGS / "tiny.yaml").read_text().replace("  d_ff: 256", "  d_fff: 256")
    (tmp_path / "c.yaml").write_text(text)
    line = text.splitlines().index("  d_fff: 256") + 1
    with pytest.raises(SpecError, match=rf"c.yaml:{line}: model.d_fff: unknown key \(did you mean 'd_ff'\?\)"):
        load_config(tmp_path / "c.yaml")


def test_bad_values_and_overrides(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"train.batch_tokens: .*less than one row of 64 tokens"):
        load_config(CONFIGS / "tiny.yaml", ["train.batch_tokens=32"])
    with pytest.raises(SpecError, match=r"model.head_dim: .*even"):
        load_config(CONFIGS / "tiny.yaml", ["model.head_dim=15"])
    with pytest.raises(SpecError, match="not of the form a.b=value"):
        load_config(CONFIGS / "tiny.yaml", ["train.steps"])
    with pytest.raises(SpecError, match="train.steps: required field is missing"):
        (tmp_path / "c.yaml").write_text((CONFIGS / "tiny.yaml").read_text().replace("  steps: 300\n", ""))
        load_config(tmp_path / "c.yaml")


def test_configs_are_frozen_and_overridable() -> None:
    config = load_config(CONFIGS / "tiny.yaml")
    with pytest.raises(ValidationError):
        config.name = "x"  # type: ignore[misc]
    changed = resolve_config(config, ["train.steps=7", "optimizer.learning_rate=1e-3"])
    assert isinstance(changed, TrainerConfig) and changed.train.steps == 7 and changed.optimizer.learning_rate == 1e-3
    assert resolve_config(config) is config and hash(config) == hash(load_config(CONFIGS / "tiny.yaml"))


def test_committed_json_schema_is_current() -> None:
    committed = json.loads((REPO / "docs" / "schemas" / "trainer.schema.json").read_text())
    assert committed == json.loads(json.dumps(json_schema())), "run: python -m trainer schema"
