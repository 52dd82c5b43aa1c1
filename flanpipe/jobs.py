"""What the workers receive (picklable, no file re-parsing): the render settings, one job per dataset, the compile context."""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from flanpipe import __version__, storage
from flanpipe.decontaminate import Decontamination
from flanpipe.formats import Shares, shares_of
from flanpipe.plan import SplitPlan
from flanpipe.schema import RecordLayout, SpecialIds
from flanpipe.spec import (DatasetSpec, FewShot, OptionsFormat, PipelineSpec, SamplesSource, TemplateLimits,
                           TfdsDataSource)
from flanpipe.store import Entry
from flanpipe.templates import CompiledDataset
from flanpipe.tokenizer import Tokenizer
from flanpipe.yamlio import Located

CACHE_FORMAT = 3  # bump when the stored tables change shape or meaning
NUM_TEMPLATES = 10


@dataclass(frozen=True)
class RenderSettings:
    """The pipeline settings that change read or rendered data (and so the cache key)."""

    seed: int
    template_choice: str
    instructions: str
    eval_instructions: str
    options_format: OptionsFormat
    cap: int
    inputs_length: int  # token ids kept per input: a row never holds more (see Tokenizer.encode_heads)
    targets_length: int
    truncate: str
    fewshot: FewShot | None = None
    bad_examples: str = "error"  # or "skip": drop examples whose fields cannot be computed
    # What one render may cost. Not in the cache key: a render within the limits gives the same text under any.
    limits: TemplateLimits = TemplateLimits()
    formats: Shares | None = None  # prompt formats and shares, canonical order; None: today's single format
    turned_weight: float = 1.0  # the turned templates' weight in the template choice (1: today's choice)

    @classmethod
    def of(cls, p: PipelineSpec) -> RenderSettings:
        return cls(p.seed, p.template_choice, p.instructions, p.eval_instructions, p.options_format, p.mixing.cap,
                   p.lengths.inputs, p.lengths.targets, p.truncate, p.fewshot, p.bad_examples, p.template_limits,
                   shares_of(p.formats), p.turned_weight)

    def as_dict(self) -> dict[str, Any]:
        out = {"seed": self.seed, "template_choice": self.template_choice, "instructions": self.instructions,
               "eval_instructions": self.eval_instructions, "options_format": self.options_format.model_dump(),
               "cap": self.cap, "lengths": [self.inputs_length, self.targets_length], "truncate": self.truncate,
               # exclude_none: a pipeline without the newer optional keys keeps its cache key
               "fewshot": self.fewshot.model_dump(exclude_none=True) if self.fewshot else None,
               "bad_examples": self.bad_examples}
        if self.formats is not None:
            out["formats"] = [list(f) for f in self.formats]
        if self.turned_weight != 1.0:  # only when set, so that the cache keys of pipelines without it stay
            out["turned_weight"] = self.turned_weight
        return out

    @property
    def variants_available(self) -> int:
        """How many distinct renders a train example has: 10 templates, or 1 in the template-free modes."""
        return NUM_TEMPLATES if self.instructions == "natural" else 1


@dataclass(frozen=True)
class DatasetJob:
    """Everything needed to read, render and evaluate one dataset on a worker."""

    spec: DatasetSpec
    cluster_title: str
    spec_sha256: str  # of the dataset file's bytes
    source: SamplesSource | TfdsDataSource
    source_fingerprint: str
    settings: RenderSettings
    tokenizer: Tokenizer = field(repr=False)
    cache_dir: str
    eval_splits: tuple[str, ...]  # validation/test when the dataset is evaluated somewhere
    trained: bool  # its train split is read: some split trains on it, or it gets a prompt-tuning set
    marks: Located | None = field(default=None, repr=False)  # the dataset file's line marks, for file:line errors
    # decontaminate: the eval n-grams its train examples are checked against when read (None: not checked)
    decontaminate: Decontamination | None = field(default=None, repr=False)

    @functools.cached_property
    def key(self) -> str:
        """Hash of everything that changes this dataset's stored tables."""
        blob = json.dumps({
            "format": CACHE_FORMAT, "flanpipe": __version__, "dataset": self.spec.name, "spec": self.spec_sha256,
            "cluster_title": self.cluster_title, "source": self.source_fingerprint,
            "tokenizer": self.tokenizer.identity, "settings": self.settings.as_dict(),
            **({"decontaminate": self.decontaminate.digest} if self.decontaminate is not None else {}),
        }, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:32]

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def entry(self) -> Entry:
        return Entry(storage.join(self.cache_dir, self.spec.name, self.key))

    @property
    def variants_available(self) -> int:
        """How many distinct renders a train example of this dataset has: its templates, or 1 in the
        template-free modes."""
        return min(self.settings.variants_available, len(self.spec.templates))

    @property
    def splits(self) -> tuple[str, ...]:
        """The source splits this compile reads: train when trained on, and the eval splits."""
        wanted = (("train",) if self.trained else ()) + self.eval_splits
        return tuple(s for s in wanted if s in self.spec.source.splits)

    @functools.cached_property
    def compiled(self) -> CompiledDataset:
        """The compiled templates, built once per worker (not pickled: Jinja templates are code objects).

        The driver checked the spec when it loaded the collection, so workers skip the static
        checks and compile each template when it first renders.
        """
        return CompiledDataset(self.spec, self.marks, cluster_title=self.cluster_title, check=False,
                               limits=self.settings.limits)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("compiled", None)
        return state


@dataclass(frozen=True)
class MixturePlan:
    """A distinct train mixture: the split that computes it and the splits that receive a copy of it."""

    name: str  # the computing split
    aliases: tuple[str, ...]  # other splits with the same train datasets (same clusters removed)
    train: tuple[str, ...]
    # (name, weight, maximum_rate, train datasets) of each sub-mixture; empty: one mixture of ``train``
    groups: tuple[tuple[str, float, int, tuple[str, ...]], ...] = ()


@dataclass(frozen=True)
class JobContext:
    """Everything the job's stages need; built by flanpipe.compiler from a Plan."""

    out_dir: str
    datasets: dict[str, DatasetJob]
    splits: tuple[SplitPlan, ...]
    mixtures: tuple[MixturePlan, ...]
    layout: RecordLayout
    seed: int
    shards: int
    window: int
    packing: bool
    algorithm: str
    truncate: str
    maximum_rate: int
    mixture_examples: int | None  # None: sized from mixture_tokens
    mixture_tokens: int | None
    special: SpecialIds  # the tokenizer's ids every row uses
    prompt_tuning_sets: bool = False
    table_cache_bytes: int = 256 << 20
    formats: bool = False  # the pipeline sets prompt formats: rendered rows and examples carry a 'format' column

    def split(self, name: str) -> SplitPlan:
        return next(s for s in self.splits if s.name == name)

    def mixture(self, name: str) -> MixturePlan:
        return next(m for m in self.mixtures if m.name == name)


def mixtures_of(splits: tuple[SplitPlan, ...]) -> tuple[MixturePlan, ...]:
    """Group splits by their train datasets: each distinct mixture is computed once (by its first split)."""
    groups: dict[tuple[str, ...], list[SplitPlan]] = {}
    for s in splits:
        groups.setdefault(s.train, []).append(s)
    return tuple(MixturePlan(same[0].name, tuple(s.name for s in same[1:]), train,
                             tuple((g.name, g.weight, g.maximum_rate, g.train) for g in same[0].submixtures))
                 for train, same in groups.items())
