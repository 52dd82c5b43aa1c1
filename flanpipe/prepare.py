"""One dataset's examples -> rendered, tokenized tables (train variants and eval rows); pure per example."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from flanpipe.hashing import stable_hash
from flanpipe.fewshot import compose, pick_exemplars
from flanpipe.spec import FewShot, OptionsFormat, PipelineSpec
from flanpipe.templates import Rendered
from flanpipe.templates import CompiledDataset
from flanpipe.tokenizer import Tokenizer

TRAIN_SCHEMA = pa.schema([
    ("row", pa.int32()), ("key", pa.string()), ("variant", pa.int32()), ("template", pa.int32()),
    ("turned", pa.bool_()), ("inputs", pa.string()), ("targets", pa.string()),
    ("input_ids", pa.list_(pa.int32())), ("target_ids", pa.list_(pa.int32())),
])
EVAL_SCHEMA = pa.schema([
    ("dataset", pa.string()), ("split", pa.string()), ("example_key", pa.string()), ("template", pa.int32()),
    ("turned", pa.bool_()), ("inputs", pa.string()), ("targets", pa.string()),
    ("options", pa.list_(pa.string())), ("answer_index", pa.int32()),
])
NUM_TEMPLATES = 10


@dataclass(frozen=True)
class RenderSettings:
    """The pipeline settings that change rendered text (and so the cache key)."""

    seed: int
    template_choice: str
    instructions: str
    eval_instructions: str
    options_format: OptionsFormat
    cap: int
    fewshot: FewShot | None = None

    @classmethod
    def of(cls, p: PipelineSpec) -> RenderSettings:
        return cls(p.seed, p.template_choice, p.instructions, p.eval_instructions, p.options_format, p.mixing.cap,
                   p.fewshot)

    def as_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "template_choice": self.template_choice, "instructions": self.instructions,
                "eval_instructions": self.eval_instructions, "options_format": self.options_format.model_dump(),
                "cap": self.cap, "fewshot": self.fewshot.model_dump() if self.fewshot else None}


def variants_available(settings: RenderSettings) -> int:
    """How many distinct renders an example has: 10 templates, or 1 in the template-free modes."""
    return NUM_TEMPLATES if settings.instructions == "natural" else 1


def keep_capped(keys: Sequence[str], settings: RenderSettings, dataset: str) -> list[int]:
    """Indices of the examples kept under the cap: a stable-hash choice, returned in source order."""
    if len(keys) <= settings.cap:
        return list(range(len(keys)))
    ranked = sorted(range(len(keys)), key=lambda i: (stable_hash(settings.seed, "cap", dataset, keys[i]), i))
    return sorted(ranked[:settings.cap])


def template_of(index: int, key: str, variant: int, settings: RenderSettings, dataset: str) -> int:
    """The template of an example's ``variant``-th use: a seeded or round-robin start, then the next ones.

    A repeated example (variant 1, 2, ...) therefore draws a different template each time.
    """
    start = index if settings.template_choice == "round_robin" else stable_hash(settings.seed, "template",
                                                                                 dataset, key)
    return (start + variant) % NUM_TEMPLATES


def render_train(compiled: CompiledDataset, examples: Sequence[tuple[str, dict[str, Any]]], variant: int,
                 settings: RenderSettings, tokenizer: Tokenizer) -> pa.Table:
    """Render and tokenize variant ``variant`` of every (already filtered and capped) example."""
    mode = settings.instructions
    shots = FewShotRenderer(compiled, examples, settings, tokenizer, mode) if settings.fewshot else None
    rows: dict[str, list[Any]] = {name: [] for name in TRAIN_SCHEMA.names}
    for i, (key, values) in enumerate(examples):
        t = template_of(i, key, variant, settings, compiled.spec.name)
        r = compiled.render(values, t, mode=mode, options_format=settings.options_format)  # type: ignore[arg-type]
        if shots is not None:
            r = shots.prefix(r, key, t)
        for name, value in (("row", i), ("key", key), ("variant", variant), ("template", r.template),
                            ("turned", r.turned), ("inputs", r.inputs), ("targets", r.targets)):
            rows[name].append(value)
    rows["input_ids"] = tokenizer.encode_batch(rows["inputs"])
    rows["target_ids"] = tokenizer.encode_batch(rows["targets"])
    return pa.table(rows, schema=TRAIN_SCHEMA)


def render_eval(compiled: CompiledDataset, split: str, examples: Sequence[tuple[str, dict[str, Any]]],
                settings: RenderSettings, *, shots: FewShotRenderer | None = None) -> pa.Table:
    """Every template x example of an eval split, with options and the answer index.

    With ``shots``, each input is prefixed with exemplars from the dataset's train examples.
    """
    mode = settings.eval_instructions
    templates = range(NUM_TEMPLATES) if mode == "natural" else [0]
    rows: dict[str, list[Any]] = {name: [] for name in EVAL_SCHEMA.names}
    for key, values in examples:
        for t in templates:
            r = compiled.render(values, t, mode=mode, options_format=settings.options_format)  # type: ignore[arg-type]
            if shots is not None:
                r = shots.prefix(r, key, t)
            answer = r.options.index(r.targets) if r.options else -1
            for name, value in (("dataset", compiled.spec.name), ("split", split), ("example_key", key),
                                ("template", r.template), ("turned", r.turned), ("inputs", r.inputs),
                                ("targets", r.targets), ("options", list(r.options)), ("answer_index", answer)):
                rows[name].append(value)
    return pa.table(rows, schema=EVAL_SCHEMA)


def fields_kept(compiled: CompiledDataset, examples: Sequence[tuple[str, dict[str, Any]]]
                ) -> tuple[list[tuple[str, dict[str, Any]]], int]:
    """(key, fields) of the examples the dataset's filter keeps, and how many it dropped."""
    kept = []
    for key, features in examples:
        try:
            values = compiled.fields_of(features)
        except Exception as e:
            e.add_note(f"dataset={compiled.spec.name} example_key={key}")
            raise
        if values is not None:
            kept.append((key, values))
    return kept, len(examples) - len(kept)


class FewShotRenderer:
    """Prefixes a rendered query with exemplars from a pool of train examples, rendered with the same template."""

    def __init__(self, compiled: CompiledDataset, pool: Sequence[tuple[str, dict[str, Any]]],
                 settings: RenderSettings, tokenizer: Tokenizer, mode: str):
        assert settings.fewshot is not None
        self.compiled, self.pool, self.settings, self.mode = compiled, pool, settings, mode
        self.fewshot: FewShot = settings.fewshot
        self.keys = [k for k, _ in pool]
        self.tokenizer = tokenizer
        self._rendered: dict[tuple[int, int], tuple[str, str]] = {}

    def _exemplar(self, index: int, template: int) -> tuple[str, str]:
        if (index, template) not in self._rendered:
            r = self.compiled.render(self.pool[index][1], template, mode=self.mode,  # type: ignore[arg-type]
                                     options_format=self.settings.options_format)
            self._rendered[(index, template)] = (r.inputs, r.targets)
        return self._rendered[(index, template)]

    def prefix(self, query: Rendered, key: str, template: int) -> Rendered:
        picks = pick_exemplars(self.keys, key, seed=self.settings.seed, dataset=self.compiled.spec.name,
                               k=self.fewshot.max_exemplars)
        exemplars = [self._exemplar(i, max(template, 0)) for i in picks]
        inputs, _ = compose(query.inputs, exemplars, self.fewshot,
                            lambda text: len(self.tokenizer.encode_batch([text])[0]))
        return Rendered(inputs, query.targets, query.options, query.template, query.turned)
