"""Shared fixtures: a tiny temporary collection to break in controlled ways."""

from __future__ import annotations

import os
import shutil
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
RTE = REPO / "templates" / "natural_language_inference" / "rte.yaml"

TINY_TAXONOMY = """\
clusters:
  natural_language_inference:
    title: Natural language inference
    datasets: [rte]
    also_remove: [paraphrase]
  paraphrase:
    title: Paraphrase
    datasets: [para]
    also_remove: [natural_language_inference]
  sentiment:
    title: Sentiment
    datasets: [senti]
"""

GENERATION = """\
name: {name}
title: {title}
cluster: {cluster}
kind: generation
source:
  tfds: demo/{name}:1.0.0
  splits: {{train: train, validation: validation, test: test}}
fields:
  text: {{feature: text}}
  summary: {{feature: summary}}
raw: {{inputs: [text], target: summary}}
templates:
{templates}
"""


def generation_yaml(name: str, cluster: str, title: str = "Demo") -> str:
    templates = "\n".join(
        f'  - {{input: "Variant {i}: summarise {{{{ text }}}}", target: "{{{{ summary }}}}"}}' for i in range(10))
    return GENERATION.format(name=name, cluster=cluster, title=title, templates=templates)


PIPE = """\
name: base
seed: 1
source: {kind: samples}
tokenizer: tok.model
layout: decoder_only
lengths: {inputs: 64, targets: 16}
truncate: right
packing: {enabled: true, algorithm: best_fit_decreasing, window: 100}
mixing: {cap: 30000, maximum_rate: 3000, tolerance: 0.05}
mixture_size: {examples: 100}
held_out: [natural_language_inference]
include_all: false
instructions: natural
eval_instructions: natural
template_choice: hash
options_format: {header: "\\n\\nOPTIONS:", item: "\\n- {option}"}
output: {shards: 2}
prompt_tuning_sets: false
"""


@pytest.fixture
def tiny_templates(tmp_path: Path) -> Path:
    """templates/ with rte (copied from the repo), para and senti (generated), and their samples."""
    root = tmp_path / "templates"
    (root / "natural_language_inference").mkdir(parents=True)
    shutil.copy(RTE, root / "natural_language_inference" / "rte.yaml")
    for name, cluster in (("para", "paraphrase"), ("senti", "sentiment")):
        (root / cluster).mkdir()
        (root / cluster / f"{name}.yaml").write_text(generation_yaml(name, cluster))
    (root / "taxonomy.yaml").write_text(TINY_TAXONOMY)
    return root


def missing_tool(reason: str) -> None:
    """A test needs a tool this machine lacks: skip, except where FLANPIPE_TEST_STRICT=1 (CI), which fails."""
    if os.environ.get("FLANPIPE_TEST_STRICT") == "1":
        pytest.fail(f"{reason}; FLANPIPE_TEST_STRICT=1 (set by .ci/run) forbids skipping it")
    pytest.skip(reason)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path
