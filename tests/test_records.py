"""The vectorized tf.train.Example encoder: byte-identical to protobuf's own serialization, for both layouts."""

from __future__ import annotations

import numpy as np
import pytest

from flanpipe.packing import Items, build_rows, pack, sizes_of, trim
from flanpipe.records import decode_example, encode_example, encode_rows, proto_example
from flanpipe.schema import RecordLayout, SpecialIds


def _packed_rows(layout: RecordLayout, seed: int, vocab: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    n = 300
    inputs = [rng.integers(2, vocab, rng.integers(0, layout.inputs_length + 40)).tolist() for _ in range(n)]
    targets = [rng.integers(2, vocab, rng.integers(0, layout.targets_length + 10)).tolist() for _ in range(n)]
    items = Items.from_lists(inputs, targets)
    t = trim(items, layout)
    sizes, capacity = sizes_of(t, layout)
    return build_rows(items, t, pack(sizes, capacity), layout, special=SpecialIds(pad=0, eos=1))


@pytest.mark.parametrize("layout", [RecordLayout("decoder_only", 96, 32), RecordLayout("encoder_decoder", 96, 32)])
@pytest.mark.parametrize("vocab", [100, 8000, 40_000, 300_000])  # 1-, 2-, 3- and 3-byte varint token ids
def test_encoder_is_byte_identical_to_protobuf_on_packed_rows(layout, vocab):
    rows = _packed_rows(layout, seed=vocab, vocab=vocab)
    encoded = encode_rows(rows)
    assert len(encoded) == len(next(iter(rows.values())))
    for r, data in enumerate(encoded):
        row = {name: value[r] for name, value in rows.items()}
        assert data == proto_example(row)
        back = decode_example(data, layout)
        assert all((back[k] == row[k]).all() for k in row)


def test_encoder_covers_every_varint_width_and_odd_shapes():
    rng = np.random.default_rng(0)
    for trial in range(40):
        rows = int(rng.integers(1, 5))
        features = {}
        for name in ("a", "zz", "m_feature", "b"):
            top = int(rng.choice([0, 1, 127, 128, 16_383, 16_384, 2**21, 2**28, 2**35, 2**56, 2**62]))
            features[name] = rng.integers(0, top + 1, (rows, int(rng.integers(1, 30))), dtype=np.int64)
        for r, data in enumerate(encode_rows(features)):
            assert data == proto_example({k: v[r] for k, v in features.items()}), trial


def test_encoder_batches_many_rows_like_one_at_a_time():
    rows = _packed_rows(RecordLayout("decoder_only", 64, 16), seed=1, vocab=8000)
    many = {k: np.concatenate([v] * 5) for k, v in rows.items()}  # more rows than one internal batch holds
    encoded = encode_rows(many)
    assert encoded[3] == encode_example({k: v[3] for k, v in many.items()})
    assert len(encoded) == len(many["decoder_positions"])


def test_encoder_refuses_negative_and_non_integer_values():
    with pytest.raises(ValueError, match="negative"):
        encode_rows({"a": np.array([[1, -1]])})
    with pytest.raises(ValueError, match="integers"):
        encode_rows({"a": np.array([[1.5]])})


def test_decode_checks_the_layout():
    layout = RecordLayout("decoder_only", 4, 2)
    data = encode_example({name: np.zeros(6, np.int32) for name in layout.features if name != "decoder_positions"})
    with pytest.raises(ValueError, match="lacks feature 'decoder_positions'"):
        decode_example(data, layout)
