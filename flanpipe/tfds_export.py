"""Makes a compiled split directory a TFDS dataset: dataset_info.json + features.json over our own shards.

With these two files, ``tfds.builder_from_directory(DIR/<split>)`` opens the split and
``builder.as_data_source(split="train")`` reads ``train/NNNNN-of-NNNNN.array_record`` in place — no
copy, no TensorFlow. It works because TFDS split metadata carries a per-split ``filepathTemplate``
and tfds 4.9.10 builds every shard path as ``data_dir / template.format(...)``
(``naming.ShardedFileTemplate.relative_filepath``), so a template may name a subdirectory:
``train/{SHARD_X_OF_Y}.array_record``. ``{SHARD_X_OF_Y}`` formats both numbers with
``max(5, len(str(num_shards)))`` digits, which is what ``flanpipe.shards.shard_name`` writes for
fewer than 100,000 shards; :func:`write_tfds_metadata` checks the names anyway.

Not covered (tfds helpers that are not on the read path): ``ShardedFileTemplate.filepath_prefix``,
``sharded_filepaths_pattern``/``SplitInfo.file_spec`` and ``get_available_shards(strict_matching=False)``
rewrite the file *name* with the regex ``^(?P<prefix>.+?)-?\\d{5,}(-of-\\d{5,})?...``, whose prefix
needs at least one character before the shard number; our names start with it, so they return
nonsense such as ``train/00000-of@2.array_record``. A file name with a prefix (``train-00000-of-00002``)
would fix them, at the price of renaming the shards.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Any

from array_record.python.array_record_module import ArrayRecordReader

from flanpipe import storage
from flanpipe.errors import OutputError
from flanpipe.schema import RecordLayout
from flanpipe.files import write_json

DATASET_INFO = "dataset_info.json"
FEATURES = "features.json"
VERSION = "1.0.0"
TRAIN_SPLIT = "train"
SHARD_TEMPLATE = "train/{SHARD_X_OF_Y}.array_record"
_TFDS_NAME = re.compile(r"^[a-zA-Z]\w*$")  # tensorflow_datasets.core.naming._NAME_CLASS
_TENSOR = "tensorflow_datasets.core.features.tensor_feature.Tensor"
_FEATURES_DICT = "tensorflow_datasets.core.features.features_dict.FeaturesDict"


def tfds_name(pipeline: str, split: str) -> str:
    """A TFDS dataset name for one split: letters, digits and '_', starting with a letter.

    Example: ``tfds_name("flan2021", "natural_language_inference")`` is
    ``"flan2021_natural_language_inference"``; ``tfds_name("0-shot", "all")`` is ``"flanpipe_0_shot_all"``.
    """
    name = re.sub(r"\W", "_", f"{pipeline}_{split}", flags=re.ASCII)
    return name if name[0].isalpha() else f"flanpipe_{name}"


def shard_file(index: int, num_shards: int) -> str:
    """The path, relative to the split directory, that TFDS computes for one shard of SHARD_TEMPLATE."""
    digits = max(5, len(str(num_shards)))  # naming._num_digits_needed
    return SHARD_TEMPLATE.format(SHARD_X_OF_Y=f"{index:0{digits}d}-of-{num_shards:0{digits}d}")


def tfds_metadata(layout: RecordLayout, shard_lengths: Sequence[int], *, name: str, num_bytes: int = 0,
                  description: str = "") -> dict[str, dict[str, Any]]:
    """The JSON content of the TFDS metadata files for a split with ``shard_lengths`` rows per shard.

    Pure: no file is read or written. Every feature of ``layout`` becomes
    ``tfds.features.Tensor(shape=(length,), dtype=int64)`` in a FeaturesDict, the JSON TFDS's own
    ``FeaturesDict.to_json()`` gives. Only ``as_data_source`` can read it: tfds 4.9.10's ArrayRecord
    adapter does not implement tf.data (``as_dataset``) at all.

    Args:
      layout: the packed-record layout of the split.
      shard_lengths: rows in ``train/00000-of-N.array_record``, ``train/00001-of-N...``, in order.
      name: TFDS dataset name (``tfds_name``).
      num_bytes: total size of the shards (informational: ``builder.info.dataset_size``).
      description: shown by ``builder.info``; a summary of the layout when empty.

    Returns:
      ``{"dataset_info.json": {...}, "features.json": {...}}``.

    Raises:
      ValueError: a name TFDS would not accept, no shards, or a negative length.
    """
    if not _TFDS_NAME.match(name):
        raise ValueError(f"TFDS dataset name {name!r} must start with a letter and hold only letters, digits "
                         f"and '_' (use flanpipe.tfds_export.tfds_name)")
    if not shard_lengths or any(n < 0 for n in shard_lengths):
        raise ValueError(f"shard_lengths must be one non-negative row count per shard, got {list(shard_lengths)}")
    features = dict(sorted(layout.features.items()))
    if not description:
        shapes = ", ".join(f"{f}[{n}]" for f, n in features.items())
        description = (f"flanpipe packed training rows ({layout.layout}, inputs {layout.inputs_length}, targets "
                       f"{layout.targets_length}): int64 {shapes}. See docs/consuming.md.")
    info = {
        "name": name,
        "version": VERSION,
        "description": description,
        "fileFormat": "array_record",
        "splits": [{
            "name": TRAIN_SPLIT,
            "filepathTemplate": SHARD_TEMPLATE,
            "shardLengths": [str(n) for n in shard_lengths],  # proto3 JSON writes int64 as strings
            "numBytes": str(num_bytes),
        }],
    }
    spec = {
        "type": _FEATURES_DICT,
        "proto_cls": "tensorflow_datasets.FeaturesDict",
        "content": {"features": {
            f: {"pythonClassName": _TENSOR,
                "tensor": {"shape": {"dimensions": [str(n)]}, "dtype": "int64", "encoding": "none"}}
            for f, n in features.items()}},
    }
    return {DATASET_INFO: info, FEATURES: spec}


def write_tfds_metadata(split_dir: str | os.PathLike[str], layout: RecordLayout, *, shard_lengths: Sequence[int],
                        name: str) -> list[str]:
    """Check the split's shards against ``shard_lengths`` and write the TFDS metadata files beside them.

    Call it before the split's manifest checksums are computed, so the files are listed there.

    Returns:
      The URLs written.

    Raises:
      OutputError: a shard TFDS would look for is missing, a shard is not named as TFDS expects, or (local
        files) a shard's record count differs from ``shard_lengths``.
    """
    base = storage.resolve(split_dir)
    expected = [shard_file(i, len(shard_lengths)) for i in range(len(shard_lengths))]
    present = [f for f in storage.list_files(base) if f.startswith("train/") and f.endswith(".array_record")]
    if sorted(present) != expected:
        raise OutputError(f"{base}: TFDS metadata needs exactly the shards {', '.join(expected)}; found "
                          f"{', '.join(present) or 'none'}")
    urls = [storage.join(base, f) for f in expected]
    if storage.is_local(base):
        # Cheap (reads each file's footer) and catches a length list out of step with the shards, which
        # would make TFDS index the wrong records. ArrayRecord reads local files only.
        for url, n in zip(urls, shard_lengths):
            reader = ArrayRecordReader(storage.filesystem(url)[1])
            try:
                count = reader.num_records()
            finally:
                reader.close()
            if count != n:
                raise OutputError(f"{url}: holds {count} records, shard_lengths says {n}")
    num_bytes = sum(_size(u) for u in urls)
    written = []
    for file, content in tfds_metadata(layout, shard_lengths, name=name, num_bytes=num_bytes).items():
        url = storage.join(base, file)
        write_json(url, content)
        written.append(url)
    return written


def _size(url: str) -> int:
    fs, path = storage.filesystem(url)
    return int(fs.size(path))
