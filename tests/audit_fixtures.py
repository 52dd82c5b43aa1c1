"""Compiled fixtures for the audit tests: the clean small world, and one with a bad dataset per lint rule."""

from __future__ import annotations

import atexit
import functools
import json
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

from flanpipe.audit import audit_output

from compile_fixtures import WORDS, compile_world, make_world
from conftest import TINY_TAXONOMY, write

# Each bad dataset plants one problem; MISC lists them in the cluster trained by both splits.
BAD_TEMPLATES: dict[str, list[tuple[str, str]]] = {
    "empty_fields": [(f"{{% if text %}}Variant {i}: {{% endif %}}{{{{ text }}}}", "{{ summary }}") for i in range(10)],
    "leaky": [(f"Variant {i}: {{{{ text }}}}" + (" In short: {{ summary }}" if i < 5 else ""), "{{ summary }}")
              for i in range(10)],
    "constant": [(f"Summarise the text, variant {i}." if i < 5 else f"Variant {i}: summarise {{{{ text }}}}",
                  "{{ summary }}") for i in range(10)],
    "labels_as_text": [(f"Variant {i}: does this hold? {{{{ text }}}}", "{{ verdict }}") for i in range(10)],
    "odd_chars": [(f"Variant {i}: summarise {{{{ text }}}}", "{{ summary }}") for i in range(10)],
    "dupes": [(f"{{{{ text }}}}{{# {i} #}}", "{{ summary }}") for i in range(10)],  # renders the same for all i
    "long_tail": [(f"Variant {i}: summarise {{{{ text }}}}", "{{ summary }}") for i in range(10)],
    "copycat": [(f"Variant {i}: summarise {{{{ text }}}}", "{{ summary }}") for i in range(10)],
}
LEAKY_LABEL = [(f"Variant {i}: {{{{ premise }}}}" + (" The answer is {{ answer }}." if i < 5 else " True?"),
                "{{ answer }}") for i in range(10)]
MISC = [*BAD_TEMPLATES, "leaky_label"]

HEAD = """\
name: {name}
title: {name}
cluster: misc
kind: {kind}
source:
  tfds: demo/{name}:1.0.0
  splits: {{train: train, validation: validation, test: test}}
"""
GENERATION_FIELDS = """\
fields:
  text: {feature: text}
  summary: {feature: summary}
  label: {feature: label}
  verdict: {expr: "'yes' if label == 0 else 'no'"}
raw: {inputs: [text], target: summary}
"""
CLASSIFICATION_FIELDS = """\
fields:
  premise: {feature: premise}
  label: {feature: label}
options: {fixed: ["yes", "no"]}
answer: label
raw: {inputs: [premise], target: answer}
"""


def _yaml(name: str, kind: str, fields: str, templates: list[tuple[str, str]]) -> str:
    lines = "".join(f"  - {{input: {json.dumps(i)}, target: {json.dumps(t)}}}\n" for i, t in templates)
    return HEAD.format(name=name, kind=kind) + fields + "templates:\n" + lines


def _sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    write(path, "".join(json.dumps(r) + "\n" for r in rows))


def _samples(name: str, rng: random.Random, copies: list[str]) -> list[dict[str, Any]]:
    rows = [{"text": _sentence(rng, rng.randint(10, 20)), "summary": _sentence(rng, rng.randint(4, 8)),
             "label": i % 2, "premise": _sentence(rng, rng.randint(8, 16))} for i in range(40)]
    for i, r in enumerate(rows):
        if name == "empty_fields":
            r["text"] = "" if i % 10 == 3 else r["text"]
            r["summary"] = "" if i % 10 == 7 else r["summary"]
        elif name == "odd_chars" and i % 5 < 2:
            r["text"] = r["text"].replace(" ", " \u0007 " if i % 5 == 0 else " \ufffd ", 1)
        elif name == "dupes" and 10 <= i < 20:
            r["text"], r["summary"] = rows[i - 10]["text"], rows[i - 10]["summary"]
        elif name == "long_tail" and i in (5, 6):  # a huge input; a target longer than the 16 target tokens
            r["text" if i == 5 else "summary"] = _sentence(rng, 1500 if i == 5 else 100)
        elif name == "copycat" and i < len(copies):
            r["text"] = copies[i]
    return rows


def _read(root: Path, dataset: str, split: str) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (root / "samples" / dataset / f"{split}.jsonl").read_text().splitlines() if x]


def make_bad_world(root: Path) -> dict[str, Any]:
    """The small world plus a 'misc' cluster of bad datasets; returns the planted contamination.

    copycat's train texts copy some rte and senti eval texts: those with 14+ words must be found dirty
    (in the split evaluating them), the one with 9-12 words must stay clean at n=13 (dirty at n=8).
    """
    pipeline = make_world(root)
    rte = [(f"{s}:{r['idx']}", r["premise"]) for s in ("validation", "test") for r in _read(root, "rte", s)]
    senti = [(f"{s}:{i}", r["text"]) for s in ("validation", "test") for i, r in enumerate(_read(root, "senti", s))]
    long_rte = [x for x in rte if len(x[1].split()) >= 14][:4]
    short_rte = [x for x in rte if 9 <= len(x[1].split()) <= 12][:1]
    long_senti = [x for x in senti if len(x[1].split()) >= 14][:3]
    planted = {"dirty": {"natural_language_inference": {"rte": sorted(k for k, _ in long_rte)},
                         "sentiment": {"senti": sorted(k for k, _ in long_senti)}},
               "short_copy": {"natural_language_inference": {"rte": [k for k, _ in short_rte]}}}
    copies = [t for _, t in long_rte + short_rte + long_senti]
    rng = random.Random(7)
    for name, templates in BAD_TEMPLATES.items():
        kind = "generation"
        write(root / "templates" / "misc" / f"{name}.yaml", _yaml(name, kind, GENERATION_FIELDS, templates))
    write(root / "templates" / "misc" / "leaky_label.yaml",
          _yaml("leaky_label", "classification", CLASSIFICATION_FIELDS, LEAKY_LABEL))
    for name in MISC:
        _jsonl(root / "samples" / name / "train.jsonl", _samples(name, rng, copies))
        for split in ("validation", "test"):
            _jsonl(root / "samples" / name / f"{split}.jsonl", _samples("", rng, [])[:10])
    write(root / "templates" / "taxonomy.yaml",
          TINY_TAXONOMY + f"  misc:\n    title: Misc\n    datasets: [{', '.join(MISC)}]\n")
    # every train example is used at least once in both splits
    pipeline.write_text(pipeline.read_text().replace("mixture_size: {examples: 100}", "mixture_size: {examples: 440}"))
    return planted


@functools.lru_cache(maxsize=None)
def audited(kind: str) -> dict[str, Any]:
    """The audit document of a compiled fixture (computed once; do not mutate it)."""
    return audit_output(compiled(kind)[0])


@functools.lru_cache(maxsize=None)
def compiled(kind: str) -> tuple[Path, dict[str, Any]]:
    """Compile the "clean" or "bad" world once per test session; returns (output dir, planted facts)."""
    root = Path(tempfile.mkdtemp(prefix=f"audit-{kind}-"))
    atexit.register(shutil.rmtree, root, True)
    planted = make_bad_world(root) if kind == "bad" else (make_world(root) and {})
    compile_world(root)
    return root / "out", planted
