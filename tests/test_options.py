"""Every pipeline option not compiled elsewhere, compiled end to end and checked in what it wrote."""

from __future__ import annotations

import json
from pathlib import Path

import grain
import pyarrow.parquet as pq

from flanpipe.packing import unpack
from flanpipe.records import decode_example
from flanpipe.schema import RecordLayout
from flanpipe.tokenizer import Tokenizer
from flanpipe.verify import verify_output

from compile_fixtures import compile_world, make_world

SPLIT = "sentiment"  # trains on rte and para


def _world(root: Path, replace: dict[str, str] | None = None, extra: str = "") -> Path:
    make_world(root, pipeline_extra=extra)
    pipe = root / "pipeline.yaml"
    text = pipe.read_text()
    for old, new in (replace or {}).items():
        assert old in text, old
        text = text.replace(old, new)
    pipe.write_text(text)
    compile_world(root)
    assert verify_output(str(root / "out")) == []
    return root / "out"


def _rows_and_examples(out: Path, layout: RecordLayout) -> tuple[list[dict], list[dict]]:
    split = out / SPLIT
    rows, examples = [], []
    for shard in sorted((split / "train").glob("*.array_record")):
        source = grain.sources.ArrayRecordDataSource([str(shard)])
        base = len(rows)
        rows += [decode_example(source[i], layout) for i in range(len(source))]
        for e in pq.read_table(split / "examples" / f"{shard.stem}.parquet").to_pylist():
            examples.append({**e, "row": e["row"] + base})
    return rows, examples


def _check_round_trip(out: Path, layout: RecordLayout, truncate: str) -> dict[str, int]:
    """Every example is in its row and segment with the tokens its text encodes to, cut on the configured side."""
    tok = Tokenizer.from_file(out / "tokenizer.model")
    eos = tok.special.eos
    rows, examples = _rows_and_examples(out, layout)
    cut = {"inputs": 0, "segments": 0}
    for e in examples:
        seg_in, seg_out = unpack(rows[e["row"]], layout)[e["segment"] - 1]
        want_in = tok.encode_batch([e["inputs"]])[0]
        if e["input_truncated"]:
            keep = layout.inputs_length - 1
            want_in = want_in[:keep] if truncate == "right" else want_in[-keep:]
            cut["inputs"] += 1
        assert seg_in.tolist() == want_in + [eos]
        assert seg_out.tolist() == tok.encode_batch([e["targets"]])[0][:layout.targets_length - 1] + [eos]
        cut["segments"] = max(cut["segments"], e["segment"])
    return cut


def test_encoder_decoder_layout(tmp_path):
    out = _world(tmp_path, {"layout: decoder_only": "layout: encoder_decoder"})
    manifest = json.loads((out / SPLIT / "manifest.json").read_text())
    assert manifest["layout"] == "encoder_decoder"
    cut = _check_round_trip(out, RecordLayout("encoder_decoder", 64, 16), "right")
    assert cut["segments"] > 1  # packed


def test_left_truncation_keeps_the_end_of_the_input(tmp_path):
    out = _world(tmp_path, {"truncate: right": "truncate: left", "lengths: {inputs: 64, targets: 16}":
                            "lengths: {inputs: 24, targets: 16}"})
    cut = _check_round_trip(out, RecordLayout("decoder_only", 24, 16), "left")
    assert cut["inputs"] > 0


def test_packing_disabled_puts_one_example_per_row(tmp_path):
    out = _world(tmp_path, {"packing: {enabled: true": "packing: {enabled: false"})
    cut = _check_round_trip(out, RecordLayout("decoder_only", 64, 16), "right")
    assert cut["segments"] == 1
    split = json.loads((out / SPLIT / "manifest.json").read_text())
    assert split["summary"]["rows"] == split["summary"]["examples"]


def test_round_robin_template_choice(tmp_path):
    out = _world(tmp_path, {"template_choice: hash": "template_choice: round_robin"})
    examples = pq.read_table(out / "natural_language_inference" / "examples").to_pylist()
    senti = [e for e in examples if e["dataset"] == "senti"]
    assert senti
    for e in senti:  # senti has no key field and no filter: its index is its line in the file
        index = int(e["example_key"].split(":")[1])
        assert e["template"] == (index + e["variant"]) % 10


def test_steps_sized_mixture(tmp_path):
    out = _world(tmp_path, {"mixture_size: {examples: 100}": "mixture_size: {steps: 20, batch_tokens: 512}"})
    split = json.loads((out / SPLIT / "manifest.json").read_text())
    # sized in tokens: the mixture fills about steps x batch tokens of rows (within one mean example's tokens)
    tokens = split["summary"]["tokens"]
    assert 0.9 * 20 * 512 <= tokens <= 1.1 * 20 * 512, tokens


def test_prompt_tuning_sets(tmp_path):
    out = _world(tmp_path, {"prompt_tuning_sets: false": "prompt_tuning_sets: true"})
    split = json.loads((out / SPLIT / "manifest.json").read_text())
    assert split["prompt_tuning"] == {"senti": {"file": "prompt_tuning/senti.parquet"}}
    rows = pq.read_table(out / SPLIT / "prompt_tuning" / "senti.parquet").to_pylist()
    train = [json.loads(line) for line in (tmp_path / "samples" / "senti" / "train.jsonl").read_text().splitlines()]
    assert len(rows) == len(train)
    assert all(r["targets"] and r["inputs"] for r in rows)
