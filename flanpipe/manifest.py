"""Manifest stage: the pydantic models of DIR/manifest.json and DIR/<split>/manifest.json, shared by every reader.

compile writes them (last, after its checks), verify re-checks the files they list, the
audit reads counts and rates from them, and the trainer reads layouts, shards and eval sets.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, ValidationError, model_serializer

from flanpipe import storage
from flanpipe.errors import OutputError
from flanpipe.files import write_json
from flanpipe.packing import lower_bound
from flanpipe.schema import RecordLayout
from flanpipe.tokenizer import Tokenizer

FORMAT = "flanpipe/2"
MANIFEST = "manifest.json"
_MODEL = ConfigDict(extra="forbid", frozen=True)


class Lengths(BaseModel):
    model_config = _MODEL
    inputs: int = Field(description="Input length of every row (encoder, or the decoder's prefix budget).")
    targets: int = Field(description="Target length.")


class TrainFiles(BaseModel):
    model_config = _MODEL
    shards: list[str] = Field(description="ArrayRecord shards, relative to the split directory, in order.")
    rows: int = Field(description="Packed rows in all shards.")
    computed_in: str = Field(description="The split whose job packed these rows: this one, or a split with the "
                                         "same train mixture (same clusters removed) whose files were copied here.")


class EvalFile(BaseModel):
    model_config = _MODEL
    file: str = Field(description="Parquet file of eval rows, relative to the split directory.")
    kind: Literal["classification", "generation"]
    metric: Literal["accuracy", "bleu", "rouge"]


class TrainRowsFile(BaseModel):
    model_config = _MODEL
    file: str = Field(description="Parquet file of the dataset's rendered train rows (prompt tuning).")


class Summary(BaseModel):
    model_config = _MODEL
    examples: int
    rows: int
    tokens: int = Field(description="Tokens in the packed rows (EOS included, padding not).")
    lower_bound_rows: int = Field(description="Fewest rows that could possibly hold the examples: decoder_only "
                                              "ceil(tokens / row length); encoder_decoder: examples filling their "
                                              "whole input or target length (one row each) plus the others' total "
                                              "size over the lengths, in the scarcer dimension.")
    packing_efficiency: float = Field(description="tokens / (rows x row length).")
    input_truncated: int
    target_truncated: int
    turned: int


class Counts(BaseModel):
    model_config = _MODEL
    clusters: dict[str, int]
    datasets: dict[str, int]
    templates: dict[str, int] = Field(description="'<dataset>/<template>' -> uses; template -1 in template-free modes.")
    formats: dict[str, int] | None = Field(default=None, description=(
        "Prompt format -> uses (zsopt, fsopt, zsnoopt, fsnoopt), when the pipeline sets 'formats'; absent otherwise."))
    dataset_formats: dict[str, int] | None = Field(default=None, description=(
        "'<dataset>/<format>' -> uses, when the pipeline sets 'formats'; absent otherwise."))

    @model_serializer(mode="wrap")
    def _without_unset_formats(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # A pipeline without prompt formats writes the same manifest bytes as before they existed.
        data = handler(self)
        for name in ("formats", "dataset_formats"):
            if data.get(name) is None:
                data.pop(name, None)
        return data


class SubMixtureInfo(BaseModel):
    model_config = _MODEL
    file: str = Field(description="The sub-pipeline file (its name).")
    weight: float = Field(description="Weight as declared in mixture_of.")
    cap: int
    maximum_rate: int
    datasets: list[str] = Field(description="Its train datasets in this split.")
    planned_share: float = Field(description="Its weight over the weights of the sub-mixtures in this split.")
    examples: int = Field(description="Train examples of its datasets in the split.")
    realized_share: float = Field(description="examples / the split's train examples.")


class SplitManifest(BaseModel):
    """DIR/<split>/manifest.json."""

    model_config = _MODEL
    format: Literal["flanpipe/2"]
    split: str
    layout: Literal["decoder_only", "encoder_decoder"]
    lengths: Lengths
    vocab_size: int
    pad_id: int = Field(description="The tokenizer's padding id, as in the top manifest's tokenizer.pad_id.")
    eos_id: int = Field(description="Id ending every input and target part of a row.")
    bos_id: int | None = Field(default=None, description="Id starting every input part of a row; None: no BOS "
                                                          "(the default, and every output of earlier versions).")
    removed_clusters: list[str]
    train: TrainFiles
    eval: dict[str, EvalFile]
    fewshot_eval: dict[str, EvalFile]
    prompt_tuning: dict[str, TrainRowsFile]
    summary: Summary
    counts: Counts
    train_examples_available: dict[str, int] = Field(description="Kept (filtered, capped) train examples.")
    planned_rates: dict[str, float]
    planned_examples: dict[str, int] = Field(description="Uses per dataset the mixture allocates.")
    realized_rates: dict[str, float]
    files: dict[str, str] = Field(description="sha256 of every file of the split directory but this manifest.")
    submixtures: dict[str, SubMixtureInfo] | None = Field(default=None, description=(
        "Per sub-mixture (mixture_of): weight, settings, datasets and planned vs realized share; absent without."))


class PipelineInfo(BaseModel):
    model_config = _MODEL
    name: str
    hash: str = Field(description="sha256 of the resolved pipeline, the tokenizer and every dataset's cache key.")
    file: str
    resolved: dict[str, Any] = Field(description="The pipeline after `extends:`, as validated.")


class TokenizerInfo(BaseModel):
    """The tokenizer copied into the output and the special ids its rows use (readers take them from here)."""

    model_config = _MODEL
    file: str = Field(description="The copy, relative to the output: tokenizer.model or tokenizer.json.")
    sha256: str
    vocab_size: int
    source: str = Field(description="File name the pipeline named.")
    kind: Literal["sentencepiece", "tokenizer.json"] = Field(
        default="sentencepiece", description="Which library reads the file (sentencepiece, or tokenizers for "
                                             "tokenizer.json); earlier versions wrote only sentencepiece.")
    pad_id: int = Field(default=0, description="Padding id (earlier versions: always 0).")
    eos_id: int = Field(default=1, description="End-of-sequence id closing every input and target part "
                                               "(earlier versions: always 1).")
    bos_id: int | None = Field(default=None, description="Beginning-of-sequence id starting every input part; "
                                                          "None: rows have no BOS.")
    unk_id: int | None = Field(default=None, description="The model's unknown-token id, for reference.")


def tokenizer_info(tokenizer: Tokenizer, source: str) -> TokenizerInfo:
    """The top manifest's record of ``tokenizer`` (its copy is written as ``tokenizer.file_name``)."""
    s = tokenizer.special
    return TokenizerInfo(file=tokenizer.file_name, sha256=tokenizer.sha256, vocab_size=tokenizer.vocab_size,
                         source=source, kind=tokenizer.kind, pad_id=s.pad, eos_id=s.eos, bos_id=s.bos,
                         unk_id=tokenizer.unk_id)


class BadInfo(BaseModel):
    model_config = _MODEL
    reasons: dict[str, int] = Field(description="Examples dropped per reason: the field at fault (e.g. 'answer').")
    first: list[list[str]] = Field(description="The first few dropped: [example key, error message].")


class DatasetInfo(BaseModel):
    model_config = _MODEL
    cache_key: str
    cluster: str
    read: dict[str, dict[str, int]] = Field(description="Per source split: examples read, filtered, capped, kept, "
                                                        "bad (dropped under bad_examples: skip).")
    bad_examples: dict[str, BadInfo] = Field(default_factory=dict, description=(
        "Per source split with bad examples dropped (bad_examples: skip): count per reason and the first few."))


class TopManifest(BaseModel):
    """DIR/manifest.json."""

    model_config = _MODEL
    format: Literal["flanpipe/2"]
    pipeline: PipelineInfo
    tokenizer: TokenizerInfo
    versions: dict[str, str]
    splits: list[str]
    datasets: dict[str, DatasetInfo]
    summary: dict[str, Summary]
    files: dict[str, str] = Field(description="sha256 of every file of the output but this manifest.")
    submixtures: dict[str, dict[str, Any]] | None = Field(default=None, description=(
        "Per sub-mixture (mixture_of): its file, weight and resolved pipeline; absent without."))
    decontamination: dict[str, Any] | None = Field(default=None, description=(
        "decontaminate: ngram, against, train examples dropped in all, and per dataset the eval sets it was "
        "checked against, how many it lost and their first keys; absent without."))


# Optional keys written only when set, so that outputs of pipelines without them keep their bytes.
_OMITTED_WHEN_NONE = ("submixtures", "decontamination")
M = TypeVar("M", bound=BaseModel)


def load(url: str | Path, model: type[M]) -> M:
    """Read and validate a manifest.

    Raises:
      OutputError: the file is missing, not JSON, of another format, or a field is wrong (named).
    """
    url = str(url)
    try:
        data = json.loads(storage.read_text(url))
    except FileNotFoundError:
        raise OutputError(f"{url}: not found; is this a directory written by `flanpipe compile`?") from None
    except json.JSONDecodeError as e:
        raise OutputError(f"{url}:{e.lineno}: not valid JSON ({e.msg})") from None
    if isinstance(data, dict) and data.get("format") != FORMAT:
        raise OutputError(f"{url}: format is {data.get('format')!r}, this flanpipe reads {FORMAT!r}; "
                          f"recompile the output with this version")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "(top)"
        message = "required field is missing" if err["type"] == "missing" else err["msg"]
        raise OutputError(f"{url}: {where}: {message}") from None


def as_data(manifest: BaseModel) -> dict[str, Any]:
    """A manifest as the JSON data written (optional keys that are not set left out)."""
    data = manifest.model_dump(mode="json")
    for key in _OMITTED_WHEN_NONE:
        if key in data and data[key] is None:
            del data[key]
    return data


def write(url: str, manifest: BaseModel) -> str:
    return write_json(url, as_data(manifest))


def summarize(shards: Sequence[Mapping[str, Any]], layout: RecordLayout) -> Summary:
    """The split summary from its shards' statistics."""
    rows = sum(s["rows"] for s in shards)
    tokens = sum(s["tokens"] for s in shards)
    row_length = layout.sequence_length
    capacity = ((layout.inputs_length + layout.targets_length,) if layout.layout == "decoder_only"
                else (layout.inputs_length, layout.targets_length))
    rest = [sum(parts) for parts in zip(*(s["bound"]["rest"] for s in shards if s["bound"]["rest"]))]
    return Summary(examples=sum(s["examples"] for s in shards), rows=rows, tokens=tokens,
                   lower_bound_rows=lower_bound(sum(s["bound"]["full"] for s in shards), rest, capacity),
                   packing_efficiency=tokens / (rows * row_length) if rows else 0.0,
                   input_truncated=sum(s["input_truncated"] for s in shards),
                   target_truncated=sum(s["target_truncated"] for s in shards),
                   turned=sum(s["turned"] for s in shards))


def counts(shards: Sequence[Mapping[str, Any]], clusters: Mapping[str, str]) -> Counts:
    datasets: Counter[str] = Counter()
    templates: Counter[str] = Counter()
    formats: Counter[str] | None = None
    for s in shards:
        datasets.update(s["datasets"])
        templates.update(s["templates"])
        if "formats" in s:
            formats = formats if formats is not None else Counter()
            formats.update(s["formats"])
    per_cluster: Counter[str] = Counter()
    for d, n in datasets.items():
        per_cluster[clusters[d]] += n
    per_format: Counter[str] = Counter()
    for name, n in (formats or {}).items():
        per_format[name.rsplit("/", 1)[1]] += n
    return Counts(clusters=dict(sorted(per_cluster.items())), datasets=dict(sorted(datasets.items())),
                  templates=dict(sorted(templates.items())),
                  formats=dict(sorted(per_format.items())) if formats is not None else None,
                  dataset_formats=dict(sorted(formats.items())) if formats is not None else None)
