"""Pydantic models for the three YAML kinds (dataset file, taxonomy, pipeline) and their loaders."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

from pydantic import (BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, ValidationInfo, field_validator,
                      model_validator)

from flanpipe.errors import SpecError, did_you_mean
from flanpipe.paths import package_path
from flanpipe.yamlio import Loc, Located, dotted, load_yaml

_STRICT = ConfigDict(extra="forbid", frozen=True)
_NAME = r"^[a-z][a-z0-9_]*$"
SplitName = Literal["train", "validation", "test"]
SPLITS: tuple[str, ...] = ("train", "validation", "test")


# --------------------------------------------------------------------------- dataset file
class FeatureField(BaseModel):
    """A template variable read straight from a source feature (nested paths use '/')."""

    model_config = _STRICT
    feature: str = Field(description="Source feature path, e.g. 'premise' or 'question/stem'.")


class ExprField(BaseModel):
    """A template variable computed by a sandboxed Jinja2 expression over earlier fields."""

    model_config = _STRICT
    expr: str = Field(description="Jinja2 expression over fields declared above, e.g. \"choices.text | join(', ')\".")


def _tag_by_key(key: str, model: type[BaseModel], other: str) -> Callable[[Any], str]:
    """A union discriminator: tag ``key`` when the YAML mapping has that key (or the value is a ``model``)."""

    def tag(value: Any) -> str:
        present = key in value if isinstance(value, dict) else isinstance(value, model)
        return key if present else other

    return tag


FieldSpec = Annotated[
    Annotated[FeatureField, Tag("feature")] | Annotated[ExprField, Tag("expr")],
    Discriminator(_tag_by_key("expr", ExprField, "feature")),
]


def _require_test(splits: dict[str, str], name: str) -> None:
    if "test" not in splits:
        raise ValueError(f"{name} must define 'test' (the split the held-out evaluation reports)")


class TfdsSource(BaseModel):
    """Where a dataset's examples come from in TensorFlow Datasets, and how its splits are sliced."""

    model_config = _STRICT
    tfds: str = Field(
        pattern=r"^[a-z0-9_]+(/[A-Za-z0-9_.\-]+)?:\d+\.\d+\.\d+$",
        description="Pinned TFDS builder 'name[/config]:version', e.g. 'super_glue/rte:1.0.2'.",
    )
    splits: dict[SplitName, str] = Field(
        description="Our split -> TFDS split slice, e.g. {train: 'train[:-200]', validation: 'train[-200:]'}."
    )
    key: str | None = Field(
        default=None,
        description="Feature path giving a stable example key; None means the example's index in its TFDS split.",
    )

    @model_validator(mode="after")
    def _check(self) -> TfdsSource:
        _require_test(self.splits, "splits")
        for name, expr in self.splits.items():
            if not re.fullmatch(r"[A-Za-z0-9_]+(\[-?\d*%?:?-?\d*%?\])?", expr):
                raise ValueError(f"split {name!r}: {expr!r} is not a TFDS split slice like 'train[:30000]'")
        return self

    @property
    def builder(self) -> str:
        """'glue/mnli:2.0.0' -> 'glue'."""
        return self.tfds.split("/")[0].split(":")[0]

    @property
    def config(self) -> str | None:
        """'glue/mnli:2.0.0' -> 'mnli'."""
        name = self.tfds.split(":")[0]
        return name.split("/", 1)[1] if "/" in name else None

    @property
    def version(self) -> str:
        return self.tfds.rsplit(":", 1)[1]


FILES_SLICE = re.compile(r"^(?P<pattern>.+?)(?:\[(?P<start>-?\d*):(?P<stop>-?\d*)\])?$")


class FilesSource(BaseModel):
    """A dataset's examples from files of its own (JSONL, Parquet or CSV), read whatever the pipeline's source."""

    model_config = _STRICT
    files: dict[SplitName, str] = Field(description=(
        "Our split -> a path or glob (relative to the dataset file, or any fsspec URL), optionally sliced by "
        "row over the matched files in name order: {train: 'data/train-*.jsonl[:5000]', test: 'data/test.csv'}."))
    format: Literal["jsonl", "parquet", "csv"] | None = Field(
        default=None, description="File format; None: from each file's extension (.jsonl/.json, .parquet, .csv).")
    key: str | None = Field(
        default=None, description="Field path giving a stable example key; None means '<file name>:<line or row>'.")

    @model_validator(mode="after")
    def _check(self) -> FilesSource:
        _require_test(self.files, "files")
        return self

    @property
    def splits(self) -> dict[str, str]:
        """Our split -> its files (the same role as a TFDS source's split slices)."""
        return dict(self.files)


HF_BUILDERS = ("json", "csv", "parquet", "text")


class HuggingFaceSource(BaseModel):
    """A dataset's examples through the Hugging Face ``datasets`` library, offline: a ``save_to_disk``
    directory, or local files read by ``load_dataset`` with one of its packaged builders."""

    model_config = _STRICT
    huggingface: str = Field(min_length=1, description=(
        "A directory written by DatasetDict.save_to_disk, relative to the dataset file (or absolute); with "
        "data_files, the packaged builder that reads them: json, csv, parquet or text."))
    data_files: dict[str, str | list[str]] | None = Field(default=None, description=(
        "load_dataset's data_files: split name -> path(s) or glob(s), relative to the dataset file. None: "
        "huggingface is a save_to_disk directory."))
    splits: dict[SplitName, str] = Field(description=(
        "Our split -> the saved split, optionally sliced by row: {train: 'train[:-500]', validation: 'train[-500:]'}."))
    key: str | None = Field(default=None, description="Field path giving a stable example key; None: the row index.")

    @model_validator(mode="after")
    def _check(self) -> HuggingFaceSource:
        if self.data_files is not None and self.huggingface not in HF_BUILDERS:
            raise ValueError(f"with data_files, huggingface names the builder that reads them: one of "
                             f"{', '.join(HF_BUILDERS)}, got {self.huggingface!r}")
        _require_test(self.splits, "splits")
        for name, expr in self.splits.items():
            if not re.fullmatch(r"[A-Za-z0-9_.\-]+(\[-?\d*:-?\d*\])?", expr):
                raise ValueError(f"split {name!r}: {expr!r} is not a split name with an optional row slice")
        return self


def _source_tag(value: Any) -> str:
    """A dataset source's kind; the tags differ from the YAML keys, so error paths never show them."""
    if isinstance(value, dict):
        return "from files" if "files" in value else "from huggingface" if "huggingface" in value else "from tfds"
    return {FilesSource: "from files", HuggingFaceSource: "from huggingface"}.get(type(value), "from tfds")


DatasetSource = Annotated[
    Annotated[TfdsSource, Tag("from tfds")] | Annotated[FilesSource, Tag("from files")]
    | Annotated[HuggingFaceSource, Tag("from huggingface")],
    Discriminator(_source_tag),
]


class FixedOptions(BaseModel):
    """Classification options fixed for the dataset, in label order."""

    model_config = _STRICT
    fixed: list[str] = Field(min_length=2, description="Option texts in label order (label i -> fixed[i]).")


class ExprOptions(BaseModel):
    """Classification options computed per example by a Jinja2 expression returning a list."""

    model_config = _STRICT
    expr: str = Field(description="Jinja2 expression over fields returning the list of option texts.")


OptionsSpec = Annotated[
    Annotated[FixedOptions, Tag("fixed")] | Annotated[ExprOptions, Tag("expr")],
    Discriminator(_tag_by_key("fixed", FixedOptions, "expr")),
]


class Raw(BaseModel):
    """What the template-free ablation modes show: which fields form the input and the target."""

    model_config = _STRICT
    inputs: list[str] = Field(min_length=1, description="Fields joined (one per line) as the raw input.")
    target: str = Field(description="Field used as the raw target ('answer' for classification).")


class Template(BaseModel):
    """One instruction template: Jinja2 strings for the input and the target."""

    model_config = _STRICT
    input: str = Field(min_length=1, description="Jinja2 template of the model input.")
    target: str = Field(min_length=1, description="Jinja2 template of the target.")
    turned: bool = Field(default=False, description="True when the template asks for the task reversed.")


class DatasetSpec(BaseModel):
    """One dataset file: identity, source, field map, options and its templates (ten in the bundled collection)."""

    model_config = _STRICT
    name: str = Field(pattern=_NAME, description="Task id; must equal the file name without '.yaml'.")
    title: str = Field(min_length=1, description="Display name used by the dataset-name instruction mode, e.g. 'RTE'.")
    cluster: str = Field(pattern=_NAME, description="Task cluster id (a key of taxonomy.yaml clusters).")
    kind: Literal["classification", "generation"] = Field(description="Classification gets options and rank scoring.")
    source: DatasetSource
    fields: dict[str, FieldSpec] = Field(
        min_length=1, description="Template variable -> source feature or expression, evaluated in order."
    )
    filter: str | None = Field(
        default=None, description="Optional Jinja2 expression over fields; examples where it is false are dropped."
    )
    options: OptionsSpec | None = Field(default=None, description="Classification only: the answer options.")
    answer: str | None = Field(
        default=None,
        description="Classification only: Jinja2 expression giving the index of the right option.",
    )
    raw: Raw = Field(description="Fields used by the no-template and dataset-name instruction modes.")
    templates: list[Template] = Field(description=(
        "1 to 10 templates (the paper's and the bundled collection's: 10); at most 3 turned, not all."))

    @model_validator(mode="after")
    def _check(self) -> DatasetSpec:
        if self.kind == "classification" and (self.options is None or self.answer is None):
            raise ValueError("a classification dataset needs 'options' and 'answer'")
        if self.kind == "generation" and (self.options is not None or self.answer is not None):
            raise ValueError("a generation dataset takes no 'options' or 'answer'")
        for reserved in ("options", "answer"):
            if reserved in self.fields:
                raise ValueError(f"field name {reserved!r} is reserved for classification datasets")
        return self

    def variables(self) -> list[str]:
        """Every name a template may use: the fields, plus options/answer for classification."""
        extra = ["options", "answer"] if self.kind == "classification" else []
        return list(self.fields) + extra


# --------------------------------------------------------------------------- taxonomy
class Cluster(BaseModel):
    """A task cluster: its datasets and the other clusters removed whenever it is held out."""

    model_config = _STRICT
    title: str = Field(min_length=1, description="Display name, e.g. 'Natural language inference'.")
    datasets: list[str] = Field(min_length=1, description="Dataset ids trained and evaluated in this cluster.")
    eval_only: list[str] = Field(
        default_factory=list, description="Datasets evaluated when the cluster is held out but never trained on."
    )
    also_remove: list[str] = Field(
        default_factory=list, description="Other clusters removed from training when this one is held out."
    )
    opt_in: bool = Field(default=False, description=(
        "True: outside the default collection. Only a pipeline that names it in `clusters:` or `held_out:` "
        "trains on, evaluates or removes it (chain_of_thought, so that FLAN 2021 pipelines stay as they were)."))


class Taxonomy(BaseModel):
    """The task clusters of the collection."""

    model_config = _STRICT
    clusters: dict[str, Cluster] = Field(min_length=1, description="Cluster id -> cluster.")

    def removed_with(self, held_out: str) -> list[str]:
        """The held-out cluster plus every cluster removed with it, in taxonomy order."""
        removed = {held_out, *self.clusters[held_out].also_remove}
        return [c for c in self.clusters if c in removed]

    def default_clusters(self) -> list[str]:
        """The clusters a pipeline trains on when it does not list ``clusters:``: every one not opt_in."""
        return [name for name, cluster in self.clusters.items() if not cluster.opt_in]

    def cluster_of(self, dataset: str) -> str:
        for name, cluster in self.clusters.items():
            if dataset in cluster.datasets or dataset in cluster.eval_only:
                return name
        raise KeyError(dataset)


# --------------------------------------------------------------------------- pipeline
class SamplesSource(BaseModel):
    """Read the example files bundled under templates/samples/ (offline)."""

    model_config = _STRICT
    kind: Literal["samples"] = Field(description="Bundled hand-written samples.")
    dir: str | None = Field(default=None, description="Samples directory; None means the bundled templates/samples.")


class TfdsDataSource(BaseModel):
    """Read prepared TFDS datasets (array_record file format) from a data directory."""

    model_config = _STRICT
    kind: Literal["tfds"] = Field(description="TensorFlow Datasets prepared on disk.")
    data_dir: str = Field(min_length=1, description="TFDS data_dir holding <builder>/<config>/<version>/.")


class Lengths(BaseModel):
    """Token lengths of the packed rows."""

    model_config = _STRICT
    inputs: int = Field(gt=0, description="Input length (paper: 1024).")
    targets: int = Field(gt=0, description="Target length (paper: 256).")


class Packing(BaseModel):
    """How tokenized examples are combined into rows."""

    model_config = _STRICT
    enabled: bool = Field(description="Pack several examples per row (paper: yes).")
    algorithm: Literal["best_fit_decreasing", "next_fit"] = Field(description="Bin-packing algorithm.")
    window: int = Field(gt=0, description="Examples per packing window; memory is bounded by it.")


class Mixing(BaseModel):
    """Examples-proportional mixing (Raffel et al. 2020) with a maximum rate."""

    model_config = _STRICT
    cap: int = Field(gt=0, description="At most this many train examples per dataset (paper: 30,000).")
    maximum_rate: int = Field(gt=0, description="A dataset's weight is min(examples, maximum_rate) (paper: 3,000).")
    tolerance: float = Field(gt=0, lt=1, description="Allowed |realized - planned| share per dataset (verify/audit).")


class ExamplesSize(BaseModel):
    model_config = _STRICT
    examples: int = Field(gt=0, description="Number of training examples in each mixture.")


class StepsSize(BaseModel):
    model_config = _STRICT
    steps: int = Field(gt=0, description="Training steps (paper: 30,000).")
    batch_tokens: int = Field(gt=0, description="Tokens per batch (paper: 8,192).")


MixtureSize = Annotated[
    Annotated[ExamplesSize, Tag("examples")] | Annotated[StepsSize, Tag("steps")],
    Discriminator(_tag_by_key("examples", ExamplesSize, "steps")),
]


class OptionsFormat(BaseModel):
    """How the OPTIONS suffix is written after a classification input: one style, or several chosen per example."""

    model_config = _STRICT
    header: str | list[str] = Field(description=(
        "Text after the input, before the first option (default '\\n\\nOPTIONS:'); a list: one header per "
        "example, chosen by stable hash with equal shares."))
    item: str | list[str] = Field(description=(
        "Format of each option: '{option}' is replaced by the option, '{letter}' by A, B, C..., '{roman}' by "
        "i, ii, iii..., '{number}' by 1, 2, 3... (default '\\n- {option}'); a list: one item style per example, "
        "chosen by stable hash with equal shares."))

    @model_validator(mode="after")
    def _check(self) -> OptionsFormat:
        for name, values in (("header", self.headers), ("item", self.items)):
            if not values:
                raise ValueError(f"{name}: the list is empty; give at least one")
            if len(set(values)) != len(values):
                raise ValueError(f"{name}: lists a style twice")
        for item in self.items:
            if item.count("{option}") != 1:
                raise ValueError(f"item {item!r} must contain '{{option}}' exactly once")
        return self

    @property
    def headers(self) -> tuple[str, ...]:
        return (self.header,) if isinstance(self.header, str) else tuple(self.header)

    @property
    def items(self) -> tuple[str, ...]:
        return (self.item,) if isinstance(self.item, str) else tuple(self.item)

    @property
    def varied(self) -> bool:
        """Several styles may be listed: the eval sets then record each row's header and item."""
        return not (isinstance(self.header, str) and isinstance(self.item, str))


class FewShot(BaseModel):
    """Few-shot formatting (paper Section 4.4)."""

    model_config = _STRICT
    max_exemplars: int = Field(gt=0, description="At most this many exemplars (paper: 16).")
    max_tokens: int = Field(gt=0, description="Exemplars + query input fit in this many tokens (paper: 960).")
    input_target_separator: str = Field(description="Between an exemplar's input and its target.")
    exemplar_separator: str = Field(description="Between consecutive exemplars and before the query.")
    exemplar_counts: list[int] | None = Field(default=None, description=(
        "Training uses draw their number of exemplars from this set by stable hash, equal shares (Flan 2022: "
        "[1, 2, 5, 10]); each at most max_exemplars. None: every use asks for max_exemplars. Either way the "
        "exemplars are then dropped from the end until they fit max_tokens; eval sets use max_exemplars."))

    @model_validator(mode="after")
    def _check(self) -> FewShot:
        counts = self.exemplar_counts
        if counts is not None:
            if not counts:
                raise ValueError("exemplar_counts: the list is empty; give at least one count or omit it")
            bad = [n for n in counts if not 1 <= n <= self.max_exemplars]
            if bad:
                raise ValueError(f"exemplar_counts: {bad[0]} is outside 1..max_exemplars "
                                 f"({self.max_exemplars})")
            if len(set(counts)) != len(counts):
                raise ValueError("exemplar_counts: lists a count twice")
        return self


# Flan 2022's four prompt formats: zero-/few-shot, with/without the OPTIONS suffix.
PROMPT_FORMATS: tuple[str, ...] = ("zsopt", "fsopt", "zsnoopt", "fsnoopt")
PromptFormat = Literal["zsopt", "fsopt", "zsnoopt", "fsnoopt"]
SHARE_EPSILON = 1e-6


class Output(BaseModel):
    """Shard layout of the compiled output."""

    model_config = _STRICT
    shards: int = Field(gt=0, description="Train shards per split.")


class TemplateLimits(BaseModel):
    """What one render of a template field may cost; exceeding a limit is a template error naming file:line."""

    model_config = _STRICT
    output_bytes: int = Field(default=1_000_000, gt=0, description=(
        "Largest rendered field (UTF-8 bytes), and largest string or list (characters, items) any operator, "
        "filter, method or macro call may produce; text emitted while rendering one field, counting macro and "
        "block bodies, is limited to 4x this."))
    steps: int = Field(default=100_000, gt=0, description="Loop iterations plus macro calls per rendered field.")
    recursion: int = Field(default=20, gt=0, description="Deepest nesting of macro (and recursive loop) calls.")
    integer_bits: int = Field(default=4096, ge=64, description="Largest integer (in bits) '*' or '**' may produce.")


class TokenizerSpec(BaseModel):
    """A tokenizer file with its special ids: read from the model, each overridable here."""

    model_config = _STRICT
    path: str = Field(min_length=1, description=(
        "A SentencePiece .model or a Hugging Face tokenizer.json, relative to the pipeline file or absolute."))
    eos_id: int | None = Field(default=None, ge=0, description="End-of-sequence id; None: the model's.")
    eos_token: str | None = Field(default=None, min_length=1, description="End-of-sequence token, by name.")
    pad_id: int | None = Field(default=None, ge=0, description="Padding id; None: the model's (or the pad rule).")
    pad_token: str | None = Field(default=None, min_length=1, description="Padding token, by name.")
    pad: Literal["eos", "unk"] | None = Field(default=None, description=(
        "For a model without a pad token: pad with its eos (or unk) id. Padding is never attended to "
        "nor trained on (segment id 0, loss weight 0), so any id works."))
    bos: bool = Field(default=False, description="Prepend the beginning-of-sequence token to every input.")
    bos_id: int | None = Field(default=None, ge=0, description="Beginning-of-sequence id (with bos: true); "
                                                               "None: the model's.")
    bos_token: str | None = Field(default=None, min_length=1, description="Beginning-of-sequence token, by name "
                                                                          "(with bos: true).")

    @model_validator(mode="after")
    def _check(self) -> TokenizerSpec:
        for name, keys in (("eos", ("eos_id", "eos_token")), ("pad", ("pad_id", "pad_token", "pad")),
                           ("bos", ("bos_id", "bos_token"))):
            given = [k for k in keys if getattr(self, k) is not None]
            if len(given) > 1:
                raise ValueError(f"{' and '.join(given)} both choose the {name} token; set only one")
        if not self.bos and (self.bos_id is not None or self.bos_token is not None):
            raise ValueError("bos_id/bos_token choose the token prepended with bos: true; bos is false")
        return self


# The plain path, or the mapping: chosen by the value's type, so a bad mapping reports its own error
# (not "should be a valid string").
TokenizerChoice = Annotated[
    Annotated[str, Tag("path")] | Annotated[TokenizerSpec, Tag("mapping")],
    Discriminator(lambda v: "path" if isinstance(v, str) else "mapping"),
]


class SubMixture(BaseModel):
    """One weighted part of a pipeline that is a mixture of pipelines (``mixture_of``)."""

    model_config = _STRICT
    pipeline: str = Field(min_length=1, description=(
        "Sub-pipeline file, relative to the pipeline file that lists it (or absolute, or "
        "flanpipe:pipelines/<name>.yaml); it may set only its datasets/clusters, mixing and render settings."))
    weight: float = Field(gt=0, description="Its share of the mixture's examples, before normalizing (e.g. 0.4).")


class Decontaminate(BaseModel):
    """Drop train examples sharing a word n-gram with evaluation sets, when the compile reads them."""

    model_config = _STRICT
    ngram: int = Field(default=13, ge=1, description="Words per n-gram (the audit's --ngram; default 13).")
    against: Literal["held_out", "all_eval"] = Field(description=(
        "held_out: the eval sets of the splits that train on the dataset; all_eval: every eval set compiled."))


class PipelineSpec(BaseModel):
    """What to build: which held-out mixtures, from which source, with which settings."""

    model_config = _STRICT
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_\-]*$", description="Pipeline name, recorded in the manifest.")
    description: str = Field(default="", description="Free text shown by 'flanpipe plan'.")
    seed: int = Field(description="Seed of every random choice (stable hashing).")
    source: SamplesSource | TfdsDataSource = Field(discriminator="kind")
    tokenizer: TokenizerChoice = Field(description=(
        "A SentencePiece .model or a Hugging Face tokenizer.json (path relative to the pipeline file or absolute), "
        "or {path: ..., eos_id, pad_id, pad, bos, ...} to set its special ids."))
    layout: Literal["decoder_only", "encoder_decoder"]
    lengths: Lengths
    truncate: Literal["right", "left"] = Field(description="Which end of an over-long input is cut.")
    packing: Packing
    mixing: Mixing
    mixture_size: MixtureSize
    held_out: list[str | list[str]] = Field(
        description="Clusters to hold out, one mixture each; a list holds several clusters out of one mixture "
                    "(named 'a+b+c'), as in the cluster-count ablation.")
    include_all: bool = Field(description="Also build 'all': every cluster trained, nothing held out.")
    datasets: list[str] | None = Field(
        default=None, description="Restrict to these datasets (None: the whole taxonomy); clusters must still exist."
    )
    clusters: list[str] | None = Field(
        default=None, description="Train only on these clusters (None: every cluster not held out and not opt_in); "
                                  "for the cluster ablation, or to opt in to an opt_in cluster."
    )
    instructions: Literal["natural", "dataset_name", "none"] = Field(
        description="natural: FLAN templates; dataset_name: '[Cluster: Title] raw input'; none: raw input only."
    )
    eval_instructions: Literal["natural", "dataset_name", "none"] = Field(
        description="Instruction mode of the eval sets (the paper evaluates 'none' with natural templates)."
    )
    template_choice: Literal["hash", "round_robin"] = Field(description="How each example's template is chosen.")
    turned_weight: float = Field(default=1.0, ge=0, le=100, description=(
        "Mixing weight of a dataset's turned templates (Flan 2022's input inversion, e.g. 0.3) against 1 for "
        "its others, in every use's template choice (taken to 1/100); 1: all templates alike."))
    options_format: OptionsFormat
    fewshot: FewShot | None = Field(default=None, description="Few-shot variant; None builds zero-shot data.")
    formats: dict[PromptFormat, float] | None = Field(default=None, description=(
        "Prompt formats of the training uses with their shares (summing to 1), e.g. {zsopt: 0.25, fsopt: 0.25, "
        "zsnoopt: 0.25, fsnoopt: 0.25}: fs = with exemplars (needs 'fewshot'), noopt = without the OPTIONS "
        "suffix. Each use's format is chosen by stable hash and recorded in examples/*.parquet (column "
        "'format'). None: every use is zero-shot with options, or few-shot with options when 'fewshot' is set."))
    prompt_tuning_sets: bool = Field(
        description="Also write each held-out dataset's rendered train examples (prompt_tuning/<dataset>.parquet).")
    output: Output
    bad_examples: Literal["error", "skip"] = Field(default="error", description=(
        "error: the first example whose fields cannot be computed (missing feature, failing expression, answer "
        "out of range) stops the compile; skip: such examples are dropped, counted per dataset and reason in the "
        "manifest and the compile summary. A template that fails on valid fields is an error either way."))
    template_limits: TemplateLimits = Field(default_factory=TemplateLimits,
                                            description="Cost limits of rendering one template field.")
    mixture_of: list[SubMixture] | None = Field(default=None, min_length=1, description=(
        "The mixture as weighted sub-mixtures, each a pipeline file of its own (datasets, mixing, render "
        "settings); None: this pipeline's datasets in one examples-proportional mixture."))
    decontaminate: Decontaminate | None = Field(default=None, description=(
        "Drop train examples sharing an n-gram with eval sets before mixing; None: keep every example."))

    @model_validator(mode="after")
    def _check_mixture_of(self) -> PipelineSpec:
        if self.mixture_of is not None and (self.datasets is not None or self.clusters is not None):
            raise ValueError("with mixture_of, each sub-pipeline sets its own datasets/clusters, not the "
                             "outer pipeline")
        return self

    @field_validator("formats", mode="after")
    @classmethod
    def _check_formats(cls, formats: dict[str, float] | None, info: ValidationInfo) -> dict[str, float] | None:
        if formats is None:
            return formats
        if not formats:
            raise ValueError("give at least one format with its share, or omit 'formats'")
        for name, share in formats.items():
            if not share > 0:
                raise ValueError(f"{name}: a share must be > 0, got {share}")
        total = sum(formats.values())
        if abs(total - 1) > SHARE_EPSILON:
            raise ValueError(f"shares must sum to 1, got {total:g}")
        few = sorted(f for f in formats if f.startswith("fs"))
        if few and info.data.get("fewshot") is None:
            raise ValueError(f"{few[0]} is few-shot: it needs a 'fewshot:' block (separators, max_tokens)")
        return formats


# --------------------------------------------------------------------------- loading
M = TypeVar("M", bound=BaseModel)


def validate_located(model: type[M], located: Located, prefix: Loc = ()) -> M:
    """Validate ``located.data`` as ``model``; the first error becomes a SpecError with file:line."""
    try:
        return model.model_validate(located.data)
    except ValidationError as e:
        raise spec_error_from(e, located, prefix) from None


def spec_error_from(error: ValidationError, located: Located, prefix: Loc = ()) -> SpecError:
    """Turn a pydantic error into one SpecError naming the file, the line and the field path."""
    errors = error.errors()
    # A misspelt key shows up twice: the unknown key and the missing field it meant. Report the
    # unknown key, whose message can suggest the right name.
    err = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    # Keep only location parts present in the data: pydantic inserts union/discriminator
    # tags (e.g. 'expr' in fields.x.expr.expr) that are not keys of the YAML.
    clean: list[str | int] = []
    data: Any = located.data
    for i, part in enumerate(err["loc"]):
        if isinstance(data, dict) and part in data:
            clean.append(part)
            data = data[part]
        elif isinstance(data, list) and isinstance(part, int) and part < len(data):
            clean.append(part)
            data = data[part]
        elif i == len(err["loc"]) - 1 and err["type"] in ("extra_forbidden", "missing"):
            clean.append(part)  # the unknown or missing key itself
    full = prefix + tuple(clean)
    path, line = located.where(full)
    kind = err["type"]
    if kind == "extra_forbidden":
        known = _model_fields_at(error, clean)
        msg = f"unknown key{did_you_mean(str(clean[-1]), known)}"
    elif kind == "missing":
        msg = "required field is missing"
    else:
        msg = err["msg"].removeprefix("Value error, ")
        if "input" in err and kind not in ("model_type", "dict_type") and not isinstance(err["input"], (dict, list)):
            msg += f", got {err['input']!r}"
    return SpecError(path, line, dotted(full), msg)


def _model_fields_at(error: ValidationError, loc: list[str | int]) -> list[str]:
    """Names the schema accepts next to an unknown key (for did-you-mean), by walking the annotations."""
    annotation: Any = _MODELS.get(error.title)
    for part in loc[:-1]:
        annotation = _step(annotation, part)
        if annotation is None:
            return []
    return sorted({name for model in _models(annotation) for name in model.model_fields})


def _models(annotation: Any) -> list[type[BaseModel]]:
    """The models an annotation can be, through Annotated / unions / Optional (not through containers)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    if get_origin(annotation) in (Annotated, Union, UnionType):
        return [m for arg in get_args(annotation) for m in _models(arg)]
    return []


def _step(annotation: Any, part: str | int) -> Any:
    """The annotation of ``annotation[part]``: a model field, a list item or a dict value."""
    models = _models(annotation)
    if models and isinstance(part, str):
        found = [m.model_fields[part].annotation for m in models if part in m.model_fields]
        return found[0] if len(found) == 1 else (Union[tuple(found)] if found else None)
    origin = get_origin(annotation)
    if origin in (Annotated, Union, UnionType):
        steps = [a for a in (_step(arg, part) for arg in get_args(annotation)) if a is not None]
        return steps[0] if len(steps) == 1 else (Union[tuple(steps)] if steps else None)
    if origin is list:
        return get_args(annotation)[0]
    if origin is dict:
        return get_args(annotation)[1]
    return None


_MODELS: dict[str, type[BaseModel]] = {m.__name__: m for m in (DatasetSpec, Taxonomy, PipelineSpec)}


def load_dataset_file(path: str | Path) -> tuple[DatasetSpec, Located]:
    """Load and validate one dataset YAML file (schema only; templates are checked in templates.py)."""
    located = load_yaml(path)
    spec = validate_located(DatasetSpec, located)
    if spec.name != Path(path).stem:
        file, line = located.where(("name",))
        raise SpecError(file, line, "name", f"must equal the file name {Path(path).stem!r}, got {spec.name!r}")
    if isinstance(spec.source, FilesSource):  # file patterns are relative to the dataset file
        base = Path(path).resolve().parent
        files = {split: _absolute(expr, base) for split, expr in spec.source.files.items()}
        spec = spec.model_copy(update={"source": spec.source.model_copy(update={"files": files})})
    if isinstance(spec.source, HuggingFaceSource):  # so are the saved directory and the data files
        base = Path(path).resolve().parent
        if spec.source.data_files is None:
            update: dict[str, Any] = {"huggingface": _absolute(spec.source.huggingface, base)}
        else:
            update = {"data_files": {name: [_absolute(p, base) for p in ([v] if isinstance(v, str) else v)]
                                     for name, v in spec.source.data_files.items()}}
        spec = spec.model_copy(update={"source": spec.source.model_copy(update=update)})
    return spec, located


def _absolute(expr: str, base: Path) -> str:
    if "://" in expr or Path(expr).expanduser().is_absolute():
        return str(Path(expr).expanduser()) if "://" not in expr else expr
    return str(base / expr)


def load_taxonomy(path: str | Path) -> tuple[Taxonomy, Located]:
    """Load and validate the taxonomy file (cross-references are checked by the collection)."""
    located = load_yaml(path)
    return validate_located(Taxonomy, located), located


def write_schemas(out: str | Path) -> list[Path]:
    """Write <kind>.schema.json for each YAML kind into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for kind, schema in json_schemas().items():
        path = out / f"{kind}.schema.json"
        path.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        written.append(path)
    return written


def json_schemas() -> dict[str, dict[str, Any]]:
    """JSON Schemas of the three YAML kinds, for editor completion."""
    return {
        "dataset": DatasetSpec.model_json_schema(),
        "taxonomy": Taxonomy.model_json_schema(),
        "pipeline": PipelineSpec.model_json_schema(),
    }


def load_pipeline(path: str | Path) -> tuple[PipelineSpec, Located]:
    """Load a pipeline file (a path, or ``flanpipe:pipelines/<name>.yaml`` for one that ships with flanpipe),
    resolving ``extends:`` chains (child keys override parent keys, deeply)."""
    try:
        bundled = package_path(str(path))
    except ValueError as e:
        raise SpecError(path, None, None, str(e)) from None
    merged = _resolve_extends(bundled or Path(path), ())
    return validate_located(PipelineSpec, merged), merged


def resolve_extends(path: str | Path) -> Located:
    """A pipeline file's data with its ``extends:`` chain merged in (not validated)."""
    return _resolve_extends(Path(path), ())


def merge_located(base: Located, override: Located) -> Located:
    """``override``'s keys over ``base``'s, as ``extends:`` merges them, each key keeping the line that set it."""
    lines = {**base.lines, **override.lines}
    return Located(_deep_merge(base.data, override.data), override.path, lines,
                   {**base.text_lines, **override.text_lines})


def _resolve_extends(path: Path, chain: tuple[Path, ...]) -> Located:
    located = load_yaml(path)
    if not isinstance(located.data, dict):
        raise SpecError(path, 1, None, "a pipeline file must be a mapping")
    parent_name = located.data.pop("extends", None)
    if parent_name is None:
        return located
    file, line = located.where(("extends",))
    if not isinstance(parent_name, str):
        raise SpecError(file, line, "extends", f"must be a file path, got {parent_name!r}")
    try:
        bundled = package_path(parent_name)
    except ValueError as e:
        raise SpecError(file, line, "extends", str(e)) from None
    parent_path = (bundled or path.parent / parent_name).resolve()
    if parent_path in chain or parent_path == path.resolve():
        raise SpecError(file, line, "extends", f"circular extends through {parent_name}")
    if not parent_path.exists():
        raise SpecError(file, line, "extends", f"no such pipeline file {parent_name!r} (looked at {parent_path})")
    parent = _resolve_extends(parent_path, chain + (path.resolve(),))
    lines = dict(parent.lines)
    lines.update({k: v for k, v in located.lines.items() if k != ("extends",)})
    text_lines = {**parent.text_lines, **located.text_lines}
    return Located(_deep_merge(parent.data, located.data), path, lines, text_lines)


# Top-level keys whose value is one of several variants: a child replaces them whole.
_REPLACED_WHOLE = frozenset({"source", "mixture_size", "fewshot", "formats"})


def _deep_merge(base: Any, override: Any, top: bool = True) -> Any:
    """Mappings merge key by key; anything else (lists included) is replaced by the override."""
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for key, value in override.items():
            whole = top and key in _REPLACED_WHOLE
            out[key] = _deep_merge(base[key], value, top=False) if key in base and not whole else value
        return out
    return override
