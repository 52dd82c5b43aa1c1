"""A compiled split opens with tfds.builder_from_directory + as_data_source, reading our shards in place."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from array_record.python.array_record_module import ArrayRecordReader

import tensorflow_datasets as tfds

from flanpipe.errors import OutputError  # noqa: E402
from flanpipe.packing import Items, Placement, build_rows, trim  # noqa: E402
from flanpipe.records import decode_example, encode_example  # noqa: E402
from flanpipe.schema import RecordLayout, SpecialIds  # noqa: E402
from flanpipe.tfds_export import (FEATURES, DATASET_INFO, shard_file, tfds_metadata, tfds_name,  # noqa: E402
                                  write_tfds_metadata)
from flanpipe.files import write_array_record  # noqa: E402

from compile_fixtures import compile_world, make_world  # noqa: E402

SPLIT = "natural_language_inference"
LAYOUT = RecordLayout("decoder_only", 64, 16)  # the lengths of compile_fixtures' pipeline


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tfds-world")
    make_world(root)
    compile_world(root)
    return root / "out"


def _records(split_dir: Path) -> list[bytes]:
    """Every serialized row of the split, shard after shard."""
    records = []
    for path in sorted((split_dir / "train").glob("*.array_record")):
        reader = ArrayRecordReader(str(path))
        records += reader.read(list(range(reader.num_records()))) if reader.num_records() else []
        reader.close()
    return records


def _shard_lengths(split_dir: Path) -> list[int]:
    lengths = []
    for path in sorted((split_dir / "train").glob("*.array_record")):
        reader = ArrayRecordReader(str(path))
        lengths.append(reader.num_records())
        reader.close()
    return lengths


def _assert_same_rows(source, records: list[bytes], layout: RecordLayout) -> None:
    assert len(source) == len(records)
    for i, record in enumerate(records):
        want = decode_example(record, layout)
        got = source[i]
        assert sorted(got) == sorted(want)
        for name, length in layout.features.items():
            assert got[name].dtype == np.int64 and got[name].shape == (length,)
            np.testing.assert_array_equal(got[name], want[name], err_msg=f"row {i} {name}")


def test_metadata_matches_what_tfds_itself_writes():
    files = tfds_metadata(LAYOUT, [3, 0, 5], name="demo")
    own = tfds.features.FeaturesDict({n: tfds.features.Tensor(shape=(k,), dtype=np.int64)
                                      for n, k in LAYOUT.features.items()})
    assert files[FEATURES] == own.to_json()
    restored = tfds.features.FeatureConnector.from_json(files[FEATURES])
    assert {n: (f.shape, f.np_dtype) for n, f in restored.items()} == {n: ((k,), np.int64)
                                                                     for n, k in LAYOUT.features.items()}
    from google.protobuf import json_format
    from tensorflow_datasets.core.proto import dataset_info_pb2

    info = json_format.Parse(json.dumps(files[DATASET_INFO]), dataset_info_pb2.DatasetInfo())
    assert list(info.splits[0].shard_lengths) == [3, 0, 5] and info.file_format == "array_record"


def test_split_loads_with_builder_from_directory_and_reads_our_shards(out, tmp_path):
    split_dir = out / SPLIT
    lengths = _shard_lengths(split_dir)
    before = sorted(p.relative_to(split_dir) for p in split_dir.rglob("*"))
    written = write_tfds_metadata(split_dir, LAYOUT, shard_lengths=lengths, name=tfds_name("base", SPLIT))
    assert sorted(Path(w).name for w in written) == [DATASET_INFO, FEATURES]

    builder = tfds.builder_from_directory(str(split_dir))
    info = builder.info
    assert info.name == "base_natural_language_inference"
    assert info.splits["train"].shard_lengths == lengths
    # The read path: every shard path is data_dir / "train/NNNNN-of-NNNNN.array_record", our files.
    assert [Path(p) for p in info.splits["train"].filepaths] == sorted((split_dir / "train").glob("*.array_record"))
    source = builder.as_data_source(split="train")
    _assert_same_rows(source, _records(split_dir), LAYOUT)
    # TFDS slicing works across the shard boundary.
    tail = builder.as_data_source(split=f"train[{lengths[0] - 2}:{lengths[0] + 2}]")
    np.testing.assert_array_equal(tail[3]["decoder_target_tokens"], source[lengths[0] + 1]["decoder_target_tokens"])
    # Reading created nothing in the split directory.
    after = sorted(p.relative_to(split_dir) for p in split_dir.rglob("*"))
    assert after == sorted(set(before) | {Path(DATASET_INFO), Path(FEATURES)})


def test_encoder_decoder_layout_with_an_empty_shard(tmp_path):
    layout = RecordLayout("encoder_decoder", 12, 6)
    rng = np.random.default_rng(0)
    items = Items.from_lists([rng.integers(3, 50, rng.integers(1, 5)).tolist() for _ in range(14)],
                             [rng.integers(3, 50, rng.integers(0, 2)).tolist() for _ in range(14)])
    place = Placement(np.arange(14) // 2, np.arange(14) % 2 + 1, 7)  # two examples per row
    built = build_rows(items, trim(items, layout), place, layout, special=SpecialIds(pad=0, eos=1))
    records = [encode_example({k: v[r] for k, v in built.items()}) for r in range(7)]
    lengths = [4, 0, 3]
    at = 0
    for i, n in enumerate(lengths):
        write_array_record(str(tmp_path / shard_file(i, 3)), records[at:at + n])
        at += n
    write_tfds_metadata(tmp_path, layout, shard_lengths=lengths, name="enc_dec")
    source = tfds.builder_from_directory(str(tmp_path)).as_data_source(split="train")
    _assert_same_rows(source, records, layout)
    assert source[0]["encoder_input_tokens"].shape == (12,) and source[0]["decoder_target_tokens"].shape == (6,)


def test_refuses_shards_out_of_step_with_the_lengths(tmp_path):
    write_array_record(str(tmp_path / shard_file(0, 2)), [encode_example({"decoder_target_tokens": [1]})])
    with pytest.raises(OutputError, match="needs exactly the shards"):
        write_tfds_metadata(tmp_path, LAYOUT, shard_lengths=[1, 0], name="x")  # 00001-of-00002 is missing
    with pytest.raises(OutputError, match="needs exactly the shards"):
        write_tfds_metadata(tmp_path, LAYOUT, shard_lengths=[1], name="x")  # TFDS would look for 00000-of-00001
    write_array_record(str(tmp_path / shard_file(1, 2)), [])
    with pytest.raises(OutputError, match="holds 0 records, shard_lengths says 2"):
        write_tfds_metadata(tmp_path, LAYOUT, shard_lengths=[1, 2], name="x")
    assert not (tmp_path / DATASET_INFO).exists()


def test_names_and_shard_files_follow_tfds_rules():
    assert tfds_name("flan2021", "natural_language_inference") == "flan2021_natural_language_inference"
    assert tfds_name("0-shot", "all") == "flanpipe_0_shot_all"
    with pytest.raises(ValueError, match="must start with a letter"):
        tfds_metadata(LAYOUT, [1], name="flan-2021")
    with pytest.raises(ValueError, match="non-negative"):
        tfds_metadata(LAYOUT, [], name="x")
    from tensorflow_datasets.core import naming

    for n in (1, 2, 99_999, 123_456):
        template = naming.ShardedFileTemplate(data_dir="/d", template="train/{SHARD_X_OF_Y}.array_record",
                                              split="train", filetype_suffix="array_record")
        assert [template.relative_filepath(shard_index=i, num_shards=n) for i in (0, n - 1)] == \
            [shard_file(0, n), shard_file(n - 1, n)]


def test_compiled_split_carries_the_tfds_metadata(out):
    split_dir = out / "sentiment"
    assert (split_dir / DATASET_INFO).exists() and (split_dir / FEATURES).exists()
    manifest = json.loads((split_dir / "manifest.json").read_text())
    assert {DATASET_INFO, FEATURES} <= set(manifest["files"])
    source = tfds.builder_from_directory(str(split_dir)).as_data_source(split="train")
    _assert_same_rows(source, _records(split_dir), LAYOUT)
