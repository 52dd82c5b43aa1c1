"""Writes tiny compiled splits in the flanpipe/2 layout (tokenizer, ArrayRecord shards, eval Parquet) for tests."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import sentencepiece as spm
from array_record.python.array_record_module import ArrayRecordWriter

from flanpipe.manifest import FORMAT, SplitManifest, Summary, TopManifest
from flanpipe.records import encode_example
from flanpipe.schema import RecordLayout
from trainer.train import train

TINY_CONFIG = Path(__file__).resolve().parent.parent / "trainer" / "configs" / "tiny.yaml"

VOCAB = 128
LENGTHS = (48, 16)
# A trivially learnable classification task: each thing has one colour (memorised in training).
THINGS = ["sky", "grass", "snow", "coal", "sun", "blood", "ocean", "leaf", "cloud", "tire", "lemon", "rose"]
COLORS = ["blue", "green", "white", "black", "yellow", "red"]
COLOR_OF = {thing: COLORS[i % len(COLORS)] for i, thing in enumerate(THINGS)}
COLOR_TEMPLATES = ["what color is the {t} ?", "the {t} has a color . name it .", "color of {t} :"]
COPY_TEMPLATES = ["repeat after me : {w}", "say again : {w}"]


def color_rows(split: str) -> list[dict]:
    """Eval rows of the colour task: every thing x template, plus one turned template without options."""
    rows = [dict(dataset="colors", split=split, example_key=t, template=k, turned=False, inputs=tpl.format(t=t),
                 targets=COLOR_OF[t], options=COLORS, answer_index=COLORS.index(COLOR_OF[t]))
            for k, tpl in enumerate(COLOR_TEMPLATES) for t in THINGS]
    rows += [dict(dataset="colors", split=split, example_key=c, template=3, turned=True, inputs=f"name a {c} thing",
                  targets=next(t for t in THINGS if COLOR_OF[t] == c), options=[], answer_index=-1) for c in COLORS]
    return rows


def copy_rows(dataset: str, split: str, n: int, seed: int) -> list[dict]:
    """Eval rows of a generation task: repeat four words."""
    rng = random.Random(f"{seed}-{dataset}-{split}")
    out = []
    for i in range(n):
        words = " ".join(rng.choice(THINGS + COLORS) for _ in range(4))
        k = i % len(COPY_TEMPLATES)
        out.append(dict(dataset=dataset, split=split, example_key=str(i), template=k, turned=False,
                        inputs=COPY_TEMPLATES[k].format(w=words), targets=words, options=[], answer_index=-1))
    return out


def write_tokenizer(root: Path, vocab_size: int = VOCAB) -> Path:
    """Train a tiny SentencePiece model with the T5 special ids (pad 0, eos 1, unk 2, no bos)."""
    root.mkdir(parents=True, exist_ok=True)
    lines = [tpl.format(t=t) + " " + c for tpl in COLOR_TEMPLATES for t, c in COLOR_OF.items()]
    lines += [r["inputs"] for r in copy_rows("copy", "train", 200, 0)] + ["name a thing OPTIONS", "\n".join(COLORS)]
    rng = random.Random(0)  # filler pseudo-words, so the corpus has enough pieces for the vocabulary
    words = ["".join(rng.choice("etaoinshrdlu") for _ in range(rng.randint(2, 6))) for _ in range(2400)]
    lines += [" ".join(words[i : i + 8]) for i in range(0, len(words), 8)]
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(lines * 3) + "\n")
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(root / "tokenizer"), vocab_size=vocab_size, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0, num_threads=1, minloglevel=2,
        user_defined_symbols=THINGS + COLORS,
    )
    return root / "tokenizer.model"


def _segments(tokenizer: spm.SentencePieceProcessor, seed: int, copies: int, lengths: tuple[int, int]) -> list:
    pairs = [(tpl.format(t=t), c) for tpl in COLOR_TEMPLATES for t, c in COLOR_OF.items()] * copies
    pairs += [(r["inputs"], r["targets"]) for r in copy_rows("copy", "train", 30 * copies, seed)]
    random.Random(seed).shuffle(pairs)
    inputs = tokenizer.encode([p[0] for p in pairs])
    targets = tokenizer.encode([p[1] for p in pairs])
    eos = tokenizer.eos_id()
    return [(i[: lengths[0] - 1] + [eos], t[: lengths[1] - 1] + [eos]) for i, t in zip(inputs, targets)]


def pack(segments: list[tuple[list[int], list[int]]], layout: RecordLayout) -> list[dict[str, np.ndarray]]:
    """Greedy in-order packing into rows of the packed-record contract (flanpipe.schema)."""
    rows: list[dict[str, np.ndarray]] = []
    for inputs, targets in segments:
        if layout.layout == "decoder_only":
            need = {"decoder": len(inputs) + len(targets)}
        else:
            need = {"encoder": len(inputs), "decoder": len(targets)}
        row = rows[-1] if rows else None
        if row is None or any(row[f"_{k}_used"] + n > len(row[f"{k}_segment_ids"]) for k, n in need.items()):
            row = {name: np.zeros(n, np.int64) for name, n in layout.features.items()}
            row.update({"_decoder_used": 0, "_encoder_used": 0, "_segments": 0})
            rows.append(row)
        row["_segments"] += 1
        seg = row["_segments"]
        if layout.layout == "decoder_only":
            _put(row, "decoder", inputs + targets, seg, loss_from=len(inputs))
            start = row["_decoder_used"] - len(inputs) - len(targets)
            row["decoder_causal_attention"][start : start + len(inputs) + 1] = 1  # + first target position
        else:
            _put(row, "encoder", inputs, seg, loss_from=None)
            _put(row, "decoder", targets, seg, loss_from=0)
    return [{k: v for k, v in row.items() if not k.startswith("_")} for row in rows]


def _put(row: dict, stack: str, tokens: list[int], seg: int, loss_from: int | None) -> None:
    a = row[f"_{stack}_used"]
    b = a + len(tokens)
    row[f"{stack}_segment_ids"][a:b] = seg
    row[f"{stack}_positions"][a:b] = np.arange(len(tokens))
    if stack == "encoder":
        row["encoder_input_tokens"][a:b] = tokens
    else:
        row["decoder_target_tokens"][a:b] = tokens
        row["decoder_input_tokens"][a:b] = [0] + tokens[:-1]  # shifted right within the segment
        row["decoder_loss_weights"][a + loss_from : b] = 1
    row[f"_{stack}_used"] = b


def write_split(
    root: Path, *, name: str = "heldout", layout: str = "decoder_only", lengths: tuple[int, int] = LENGTHS,
    copies: int = 4, shards: int = 2, seed: int = 0, vocab_size: int = VOCAB,
) -> Path:
    """Write DIR/manifest.json, DIR/tokenizer.model and DIR/<name>/...; return the split directory."""
    tok_path = root / "tokenizer.model"
    if not tok_path.exists():
        write_tokenizer(root, vocab_size)
    tokenizer = spm.SentencePieceProcessor(model_file=str(tok_path))
    record_layout = RecordLayout(layout, *lengths)  # type: ignore[arg-type]
    rows = pack(_segments(tokenizer, seed, copies, lengths), record_layout)
    split_dir = root / name
    (split_dir / "train").mkdir(parents=True, exist_ok=True)
    shard_names = [f"train/{i:05d}-of-{shards:05d}.array_record" for i in range(shards)]
    for i, shard in enumerate(shard_names):
        writer = ArrayRecordWriter(str(split_dir / shard), "group_size:1")
        for row in rows[i::shards]:
            writer.write(encode_example(row))
        writer.close()
    eval_sets = {
        "colors": ("classification", "accuracy", color_rows("validation") + color_rows("test")),
        "copy": ("generation", "bleu", copy_rows("copy", "validation", 8, seed) + copy_rows("copy", "test", 8, seed)),
        "echo": ("generation", "rouge", copy_rows("echo", "validation", 4, seed) + copy_rows("echo", "test", 4, seed)),
    }
    fewshot = [dict(r, inputs=f"color of snow : white . {r['inputs']}")
               for r in color_rows("validation") + color_rows("test")]
    manifest: dict[str, Any] = {"eval": {}, "fewshot_eval": {}}
    (split_dir / "eval").mkdir(exist_ok=True)
    for section, sets in (("eval", eval_sets), ("fewshot_eval", {"colors": ("classification", "accuracy", fewshot)})):
        for dataset, (kind, metric, eval_rows) in sets.items():
            file = f"eval/{dataset}{'_fewshot' if section == 'fewshot_eval' else ''}.parquet"
            write_eval_parquet(split_dir / file, eval_rows)
            manifest[section][dataset] = {"file": file, "kind": kind, "metric": metric}
    # The manifests through the compiler's own models: the trainer reads exactly this schema.
    summary = Summary(examples=len(rows), rows=len(rows), tokens=0, lower_bound_rows=0, packing_efficiency=0.0,
                      input_truncated=0, target_truncated=0, turned=0)
    split_manifest = SplitManifest(
        format=FORMAT, split=name, layout=layout, lengths={"inputs": lengths[0], "targets": lengths[1]},
        vocab_size=tokenizer.get_piece_size(), pad_id=0, eos_id=1, removed_clusters=[],
        train={"shards": shard_names, "rows": len(rows), "computed_in": name}, eval=manifest["eval"],
        fewshot_eval=manifest["fewshot_eval"], prompt_tuning={}, summary=summary,
        counts={"clusters": {}, "datasets": {}, "templates": {}}, train_examples_available={}, planned_rates={},
        planned_examples={}, realized_rates={}, files={})
    (split_dir / "manifest.json").write_text(split_manifest.model_dump_json(indent=2))
    top = TopManifest(
        format=FORMAT, pipeline={"name": "fixture", "hash": "0", "file": "fixture.yaml", "resolved": {}},
        tokenizer={"file": "tokenizer.model", "sha256": hashlib.sha256(tok_path.read_bytes()).hexdigest(),
                   "vocab_size": tokenizer.get_piece_size(), "source": "tokenizer.model"},
        versions={}, splits=[name], datasets={}, summary={name: summary}, files={})
    (root / "manifest.json").write_text(top.model_dump_json(indent=2))
    return split_dir


def write_eval_parquet(path: Path, rows: list[dict]) -> None:
    """Eval rows with the contract's column types (options: list<string>)."""
    schema = pa.schema([("dataset", pa.string()), ("split", pa.string()), ("example_key", pa.string()),
                        ("template", pa.int64()), ("turned", pa.bool_()), ("inputs", pa.string()),
                        ("targets", pa.string()), ("options", pa.list_(pa.string())), ("answer_index", pa.int64())])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)


def color_train_rows(path: Path) -> Path:
    """Prompt-tuning train rows for the colour task (eval-row columns), one per thing x template."""
    rows = [dict(r, split="train", example_key=f"{r['example_key']}/{r['template']}") for r in color_rows("train")]
    write_eval_parquet(path, [r for r in rows if not r["turned"]])
    return path


_SHARED: dict[str, Path] = {}


def shared_split(tmp_path_factory: object, layout: str = "decoder_only") -> Path:
    """One split per layout for the whole test session (tmp_path_factory: pytest's session fixture)."""
    if layout not in _SHARED:
        directory = tmp_path_factory.mktemp(f"split_{layout}")  # type: ignore[attr-defined]
        _SHARED[layout] = write_split(directory, layout=layout)
    return _SHARED[layout]


def shared_run(tmp_path_factory: object) -> tuple[Path, Path, Any]:
    """(split dir, workdir, TrainResult) of trainer/configs/tiny.yaml trained on shared_split, once per session."""
    if "run" not in _RUNS:
        split = shared_split(tmp_path_factory)
        workdir = tmp_path_factory.mktemp("tiny_run")  # type: ignore[attr-defined]
        _RUNS["run"] = (split, workdir, train(split, TINY_CONFIG, workdir, progress=False))
    return _RUNS["run"]


_RUNS: dict[str, tuple[Path, Path, Any]] = {}
