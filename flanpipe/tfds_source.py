"""Reading prepared TFDS datasets (array_record format) without TensorFlow.

The data must have been prepared beforehand (``tfds build ... --file_format=array_record``) into
``<data_dir>/<builder>/<config>/<version>/``. We open it with ``tfds.builder_from_directory``, which
reads the stored ``dataset_info.json``/``features.json`` and never needs TensorFlow (not even for
builders such as ``super_glue`` that cannot be constructed by name without it), and read records
through ``builder.as_data_source(split=<slice>)``: TFDS applies the slice, we read in batches.

Values come back as TFDS decodes them (text as ``bytes``, numbers as numpy scalars/arrays);
``flanpipe.templates.to_python`` turns them into plain Python when fields are looked up.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flanpipe.errors import SourceError
from flanpipe.spec import DatasetSpec, FeatureField

BATCH = 1000  # records per __getitems__ call: ~25x faster than one-by-one random reads


def _what(spec: DatasetSpec) -> str:
    return f"dataset {spec.name!r} (templates/{spec.cluster}/{spec.name}.yaml, tfds: {spec.source.tfds})"


def build_command(spec: DatasetSpec, data_dir: str) -> str:
    return f"tfds build {spec.source.tfds} --data_dir={data_dir} --file_format=array_record"


def _locate(spec: DatasetSpec, data_dir: str) -> tuple[Path, str | None]:
    """The dataset's version directory, and why it is not a complete preparation (None when it is)."""
    src = spec.source
    root = Path(data_dir)
    parent = root / src.builder / src.config if src.config else root / src.builder
    path = parent / src.version
    if (path / "dataset_info.json").is_file():
        return path, None
    found = sorted(p.name for p in parent.iterdir() if p.is_dir()) if parent.is_dir() else []
    versions = [v for v in found if not v.startswith("incomplete")]
    if path.is_dir():
        return path, f"{path} exists but has no dataset_info.json (preparation did not finish)"
    if versions:
        return path, (f"{path} does not exist (prepared versions there: {', '.join(versions)}; the dataset file "
                      f"pins {src.version})")
    if found:
        return path, f"{path} does not exist (only unfinished preparations: {', '.join(found)})"
    return path, f"{path} does not exist"


def dataset_dir(spec: DatasetSpec, data_dir: str) -> Path:
    """``<data_dir>/<builder>[/<config>]/<version>``, checked to hold a complete prepared dataset."""
    if not Path(data_dir).is_dir():
        raise SourceError(
            f"{_what(spec)}: TFDS data_dir {data_dir!r} does not exist; set source.data_dir of the pipeline to "
            f"the directory holding prepared datasets, or prepare this one with: {build_command(spec, data_dir)}"
        )
    path, problem = _locate(spec, data_dir)
    if problem is not None:
        raise SourceError(
            f"{_what(spec)}: not prepared in data_dir {data_dir}: {problem}. Prepare it with: "
            f"{build_command(spec, data_dir)} (the tfds command line needs TensorFlow installed)"
        )
    return path


def _info_json(spec: DatasetSpec, path: Path) -> dict[str, Any]:
    try:
        info = json.loads((path / "dataset_info.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise SourceError(f"{_what(spec)}: cannot read {path / 'dataset_info.json'}: {e}") from None
    return info if isinstance(info, dict) else {}


@dataclass(frozen=True)
class Status:
    """Whether a dataset is prepared in a data_dir, and what it holds or how to prepare it."""

    prepared: bool
    state: str  # "prepared", or what is wrong
    counts: dict[str, int]  # examples per source split after its slice, when prepared
    command: str  # the tfds command that prepares it
    manual_download: bool  # the builder needs files downloaded by hand first


def status(spec: DatasetSpec, data_dir: str) -> Status:
    """Check one dataset's preparation without raising (for ``flanpipe sources``)."""
    command = build_command(spec, data_dir)
    manual = _needs_manual_download(spec)
    path, problem = _locate(spec, data_dir)
    if problem is None:
        try:
            builder = _builder(spec, data_dir)
            counts = {split: _slice_size(spec, builder, expr) for split, expr in spec.source.splits.items()}
        except SourceError as e:
            return Status(False, str(e).split(": ", 1)[-1], {}, command, manual)
        return Status(True, "prepared", counts, command, manual)
    return Status(False, problem, {}, command, manual)


def _needs_manual_download(spec: DatasetSpec) -> bool:
    """Whether the builder's class declares manual download instructions (False when it cannot be loaded)."""
    try:
        import tensorflow_datasets as tfds

        return bool(getattr(tfds.builder_cls(spec.source.builder), "MANUAL_DOWNLOAD_INSTRUCTIONS", None))
    except Exception:  # an unknown or unimportable builder: the prepare command will say why
        return False


def _check_format(spec: DatasetSpec, path: Path, data_dir: str) -> None:
    fmt = _info_json(spec, path).get("fileFormat") or "tfrecord"  # TFDS omits it for its default, tfrecord
    if fmt != "array_record":
        raise SourceError(
            f"{_what(spec)}: {path} is prepared in {fmt!r} format, but flanpipe reads only 'array_record' "
            f"(random access without TensorFlow). Re-prepare it with: {build_command(spec, data_dir)} "
            f"(or convert it with `tfds convert_format --dataset_version_dir={path} --out_file_format=array_record`); "
            f"the tfds command line needs TensorFlow installed"
        )


def _open(path: str) -> Any:
    import tensorflow_datasets as tfds  # imported lazily: slow, and only needed for TFDS sources

    return tfds.builder_from_directory(path)  # no memo: each dataset's source is opened once per stage


def _builder(spec: DatasetSpec, data_dir: str) -> Any:
    path = dataset_dir(spec, data_dir)
    _check_format(spec, path, data_dir)
    try:
        builder = _open(str(path))
    except Exception as e:  # a damaged directory can fail in many ways inside TFDS
        raise SourceError(f"{_what(spec)}: cannot open the prepared data at {path}: {type(e).__name__}: {e}") from None
    _check_features(spec, builder.info.features, path)
    return builder


# ------------------------------------------------------------------ feature paths
def feature_children(feature: Any) -> dict[str, Any] | None:
    """Named sub-features of a TFDS feature (FeaturesDict, Translation, Sequence of a dict), else None."""
    from tensorflow_datasets.core import features as F

    while isinstance(feature, F.Sequence):  # Sequence({...}) reads as a dict of lists
        feature = feature.feature
    if isinstance(feature, F.FeaturesDict):  # also Translation (a dict of languages) and
        return dict(feature.items())        # TranslationVariableLanguages (a Sequence of {language, translation})
    return None


def missing_feature(features: Any, path: str) -> str | None:
    """None when ``a/b`` exists in ``features``; else a message saying which part is missing."""
    node = features
    done: list[str] = []
    for part in path.split("/"):
        children = feature_children(node)
        if children is None:
            return f"'{'/'.join(done)}' has no sub-features (it is {type(node).__name__}), so '{part}' cannot be read"
        if part not in children:
            where = f"under '{'/'.join(done)}'" if done else "at the top level"
            return f"no feature '{part}' {where} (there: {', '.join(sorted(children))})"
        node = children[part]
        done.append(part)
    return None


def needed_features(spec: DatasetSpec) -> list[tuple[str, str]]:
    """(what needs it, feature path) for every feature the dataset file reads."""
    needed = [(f"fields.{name}", f.feature) for name, f in spec.fields.items() if isinstance(f, FeatureField)]
    if spec.source.key:
        needed.append(("source.key", spec.source.key))
    return needed


def _check_features(spec: DatasetSpec, features: Any, path: Path) -> None:
    for who, feature in needed_features(spec):
        problem = missing_feature(features, feature)
        if problem:
            raise SourceError(
                f"{_what(spec)}: {who} reads feature '{feature}', which the prepared data at {path} does not have: "
                f"{problem}. Fix the feature path in the dataset file, or prepare the builder version it was written for."
            )


# ------------------------------------------------------------------ splits
def _slice(spec: DatasetSpec, split: str) -> str:
    try:
        return spec.source.splits[split]
    except KeyError:
        raise SourceError(f"{_what(spec)}: no split {split!r} in source.splits "
                          f"(defined: {', '.join(spec.source.splits)})") from None


def _slice_size(spec: DatasetSpec, builder: Any, expr: str) -> int:
    splits = builder.info.splits
    base = expr.split("[", 1)[0]
    if base not in splits:
        raise SourceError(f"{_what(spec)}: slice {expr!r} names TFDS split {base!r}, which the prepared data does "
                          f"not have (it has: {', '.join(sorted(splits.keys()))})")
    total = splits[base].num_examples
    try:
        n = splits[expr].num_examples  # TFDS resolves the slice; it raises when a bound exceeds the split
    except ValueError as e:
        raise SourceError(f"{_what(spec)}: slice {expr!r} does not fit TFDS split {base!r} of {total} examples "
                          f"({e}); fix source.splits in the dataset file") from None
    if n < 0:
        raise SourceError(f"{_what(spec)}: slice {expr!r} of TFDS split {base!r} ({total} examples) is empty "
                          f"(its end is before its start); fix source.splits in the dataset file")
    return n


def split_size(spec: DatasetSpec, split: str, data_dir: str) -> int:
    """Number of examples in the sliced TFDS split ``spec.source.splits[split]``."""
    expr = _slice(spec, split)
    return _slice_size(spec, _builder(spec, data_dir), expr)


def read_split(spec: DatasetSpec, split: str, data_dir: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (index within the sliced split, decoded features) in stored order."""
    expr = _slice(spec, split)
    builder = _builder(spec, data_dir)
    n = _slice_size(spec, builder, expr)
    if n == 0:
        return
    try:
        source = builder.as_data_source(split=expr)
    except Exception as e:
        raise SourceError(f"{_what(spec)}: cannot read slice {expr!r} of the prepared data at "
                          f"{dataset_dir(spec, data_dir)}: {type(e).__name__}: {e}") from None
    if len(source) != n:  # pragma: no cover - TFDS resolves both the same way
        raise SourceError(f"{_what(spec)}: slice {expr!r} has {len(source)} records, dataset_info.json says {n}")
    for start in range(0, n, BATCH):
        batch = source.__getitems__(list(range(start, min(n, start + BATCH))))
        for offset, features in enumerate(batch):
            yield start + offset, features


def fingerprint(spec: DatasetSpec, data_dir: str) -> str:
    """Identity of the prepared data: builder, version, slices and the dataset_info.json content."""
    path = dataset_dir(spec, data_dir)
    h = hashlib.sha256()
    src = spec.source
    h.update(json.dumps({"builder": src.builder, "config": src.config, "version": src.version,
                         "splits": src.splits}, sort_keys=True).encode())
    h.update(b"\0" + (path / "dataset_info.json").read_bytes())
    return h.hexdigest()
