"""Render stage: a chunk of kept examples -> rendered, tokenized train rows (one variant) or eval rows; pure per chunk."""

from __future__ import annotations

import array
import time
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

import numpy as np
import pyarrow as pa

from flanpipe import storage
from flanpipe.fewshot import compose, exemplar_text, pick_exemplars
from flanpipe.formats import exemplar_counts_of, formats_of, has_options, is_fewshot, styles_of
from flanpipe.hashing import TEMPLATE, mix64
from flanpipe.jobs import NUM_TEMPLATES, DatasetJob, RenderSettings
from flanpipe.read import fields_of, load_chunk
from flanpipe.spec import FewShot, OptionsFormat
from flanpipe.store import read_stats, read_table, write_stats, write_table
from flanpipe.templates import CompiledDataset, Rendered
from flanpipe.tokenizer import Tokenizer

RENDERED_SCHEMA = pa.schema([
    ("row", pa.int32()), ("key", pa.string()), ("key_hash", pa.uint64()), ("template", pa.int32()),
    ("turned", pa.bool_()), ("inputs", pa.string()), ("targets", pa.string()),
    ("input_ids", pa.list_(pa.int32())), ("target_ids", pa.list_(pa.int32())),
])
# With several option styles, eval rows also record the header and item style their OPTIONS suffix used.
STYLE_FIELDS = [pa.field("options_header", pa.string()), pa.field("options_item", pa.string())]
# With prompt formats, a rendered train row records its use's format (zsopt, fsopt, zsnoopt, fsnoopt).
FORMAT_FIELD = pa.field("format", pa.string())
EVAL_SCHEMA = pa.schema([
    ("dataset", pa.string()), ("split", pa.string()), ("example_key", pa.string()), ("template", pa.int32()),
    ("turned", pa.bool_()), ("inputs", pa.string()), ("targets", pa.string()),
    ("options", pa.list_(pa.string())), ("answer_index", pa.int32()),
])


def templates_of(index: np.ndarray, key_hash: np.ndarray, variant: int, settings: RenderSettings,
                 count: int = NUM_TEMPLATES, *, turned: Sequence[bool] = ()) -> list[int]:
    """The template of each example's ``variant``-th use among ``count``: a seeded (or round-robin) start, then
    the next ones.

    A repeated example (variant 1, 2, ...) therefore draws a different template each time. With a
    ``turned_weight`` other than 1 and some ``turned`` template, the start and the next ones are positions
    on the dataset's weighted cycle (``template_cycle``) instead, so every use weighs its templates so.
    """
    if settings.turned_weight != 1.0 and any(turned[:count]):
        cycle = template_cycle(turned[:count], settings.turned_weight)
        count, pick = len(cycle), cycle
    else:
        pick = None
    if settings.template_choice == "round_robin":
        start = index.astype(np.int64)
    else:
        start = (mix64(key_hash, TEMPLATE) % np.uint64(count)).astype(np.int64)
    position = (start + variant) % count
    return (position if pick is None else pick[position]).tolist()


def template_cycle(turned: Sequence[bool], weight: float) -> np.ndarray:
    """A cycle of template indices in which a turned template appears ``weight`` times as often as another
    (the weight taken to 1/100), spread out by smooth weighted round robin: consecutive positions hold
    different templates unless one template outweighs all others together.

    Example:
      >>> template_cycle([False, False, True], 0.5).tolist()
      [0, 1, 2, 0, 1]
    """
    ratio = Fraction(weight).limit_denominator(100)
    weights = [ratio.numerator if t else ratio.denominator for t in turned]
    total = sum(weights)
    current = [0] * len(weights)
    out = []
    for _ in range(total):
        current = [c + w for c, w in zip(current, weights)]
        best = max(range(len(weights)), key=lambda i: (current[i], -i))
        current[best] -= total
        out.append(best)
    return np.asarray(out, np.int64)


_ENCODE_BATCH = 256  # texts per native call: the ids come back as Python ints, so keep their lists short-lived


def token_lists(tokenizer: Tokenizer, texts: Sequence[str], keep: int | None = None) -> pa.Array:
    """Token ids of each text (no EOS) as an Arrow list<int32> column; only the first ``keep`` when given.

    ``keep`` one past what a row holds still shows that a text was cut.
    """
    lengths, values = [], []
    for start in range(0, len(texts), _ENCODE_BATCH):
        batch = texts[start:start + _ENCODE_BATCH]
        ids = tokenizer.encode_batch(batch) if keep is None else tokenizer.encode_heads(batch, keep)
        lengths.append(np.fromiter(map(len, ids), np.int32, count=len(ids)))
        flat = array.array("i")
        for x in ids:  # array.fromlist: the fastest way from Python ints to an int32 buffer (~20 ns an id)
            flat.fromlist(x)
        values.append(np.frombuffer(flat, np.int32))
    offsets = np.zeros(len(texts) + 1, np.int32)
    if lengths:
        np.cumsum(np.concatenate(lengths), out=offsets[1:])
    flat = np.concatenate(values) if values else np.zeros(0, np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat))


class Exemplars:
    """A dataset's few-shot pool and the exemplar texts rendered from it (memoized per pool row and template).

    The pool is the dataset's first train chunk in mix order: a seeded sample of at most
    ``CHUNK_ROWS`` capped train examples, so picking and rendering exemplars costs O(k) per
    query and memory stays bounded whatever the dataset size.
    """

    def __init__(self, compiled: CompiledDataset, pool: pa.Table, settings: RenderSettings, tokenizer: Tokenizer,
                 mode: str):
        assert settings.fewshot is not None
        self.compiled, self.settings, self.tokenizer, self.mode = compiled, settings, tokenizer, mode
        self.fewshot: FewShot = settings.fewshot
        self.keys = pool.column("key").to_pylist()
        self.row_of = {k: i for i, k in enumerate(self.keys)}
        self.values = fields_of(compiled, pool)
        self._texts: dict[tuple[int, int, tuple[int, int], bool], tuple[str, int]] = {}

    def count(self, text: str) -> int:
        return len(self.tokenizer.encode_batch([text])[0])

    def picks(self, key: str, key_hash: int, count: int | None = None) -> list[int]:
        """The pool rows shown before this query (the same for all of its templates): ``count`` of them, or
        max_exemplars."""
        return pick_exemplars(len(self.keys), key_hash, count or self.fewshot.max_exemplars,
                              exclude=self.row_of.get(key, -1))

    def _text(self, row: int, template: int, style: tuple[int, int], with_options: bool) -> tuple[str, int]:
        memo = (row, template, style, with_options)
        if memo not in self._texts:
            r = self.compiled.render(self.values[row], template, mode=self.mode,  # type: ignore[arg-type]
                                     options_format=self.settings.options_format, key=self.keys[row],
                                     style=style, with_options=with_options)
            text = exemplar_text(r.inputs, r.targets, self.fewshot)
            self._texts[memo] = (text, self.count(text))
        return self._texts[memo]

    def prefix(self, query: Rendered, picks: Sequence[int], style: tuple[int, int] = (0, 0),
               with_options: bool = True) -> Rendered:
        """The query with as many exemplars as fit the token budget, rendered like it: its template, option style
        and with or without the OPTIONS suffix."""
        texts = [self._text(row, max(query.template, 0), style, with_options) for row in picks]
        inputs, _ = compose(query.inputs, [t for t, _ in texts], [n for _, n in texts], self.fewshot, self.count)
        return Rendered(inputs, query.targets, query.options, query.template, query.turned)


def render_train(compiled: CompiledDataset, chunk: pa.Table, variant: int, settings: RenderSettings,
                 tokenizer: Tokenizer, *, shots: Exemplars | None = None) -> pa.Table:
    """Render and tokenize variant ``variant`` of every example of a stored chunk.

    With ``settings.formats`` each use gets a prompt format by stable hash (few-shot formats take
    exemplars from ``shots``, noopt ones leave the OPTIONS suffix out), recorded in a 'format'
    column; without it every use is few-shot when ``shots`` is given, zero-shot otherwise.
    """
    mode = settings.instructions
    keys = chunk.column("key").to_pylist()
    hashes = np.asarray(chunk.column("key_hash"))
    templates = templates_of(np.asarray(chunk.column("index")), hashes, variant, settings, len(compiled.templates),
                             turned=[t.turned for t in compiled.spec.templates])
    n = len(keys)
    formats = formats_of(hashes, variant, settings.formats) if settings.formats else None
    styles = styles_of(hashes, variant, settings.options_format)
    fewshot = settings.fewshot
    counts = (exemplar_counts_of(hashes, variant, fewshot.exemplar_counts)
              if fewshot is not None and fewshot.exemplar_counts else [None] * n)
    inputs, targets, used, turned = [], [], [], []
    for i, (values, key, h, t) in enumerate(zip(fields_of(compiled, chunk), keys, hashes.tolist(), templates)):
        with_options = formats is None or has_options(formats[i])
        r = compiled.render(values, t, mode=mode, options_format=settings.options_format,  # type: ignore[arg-type]
                            key=key, style=styles[i], with_options=with_options)
        if shots is not None and (formats is None or is_fewshot(formats[i])):
            r = shots.prefix(r, shots.picks(key, h, counts[i]), styles[i], with_options)
        inputs.append(r.inputs)
        targets.append(r.targets)
        used.append(r.template)
        turned.append(r.turned)
    table = pa.table({
        "row": chunk.column("row"), "key": chunk.column("key"), "key_hash": chunk.column("key_hash"),
        "template": pa.array(used, pa.int32()), "turned": pa.array(turned, pa.bool_()),
        "inputs": pa.array(inputs, pa.string()), "targets": pa.array(targets, pa.string()),
        # A row holds inputs_length - 1 input ids (+ EOS): keeping inputs_length shows a cut.
        # Left truncation keeps the end of the input, so it is encoded whole.
        "input_ids": token_lists(tokenizer, inputs, settings.inputs_length if settings.truncate == "right" else None),
        "target_ids": token_lists(tokenizer, targets, settings.targets_length),
    }, schema=RENDERED_SCHEMA)
    if formats is not None:
        table = table.append_column(FORMAT_FIELD, pa.array(formats, pa.string()))
    return table


def render_eval(compiled: CompiledDataset, split: str, chunk: pa.Table, settings: RenderSettings, *,
                shots: Exemplars | None = None) -> pa.Table:
    """Every template x example of a stored eval chunk, with options and the answer index.

    With ``shots``, each input is prefixed with exemplars from the dataset's train pool,
    the same exemplars for all templates of an example.
    """
    mode = settings.eval_instructions
    templates = range(len(compiled.templates)) if mode == "natural" else [0]
    rows: dict[str, list[Any]] = {name: [] for name in EVAL_SCHEMA.names}
    keys = chunk.column("key").to_pylist()
    hashes = chunk.column("key_hash").to_pylist()
    fmt = settings.options_format
    styles = styles_of(np.asarray(chunk.column("key_hash")), 0, fmt)  # one option style per eval example
    used: list[tuple[int, int] | None] = []  # None: the row has no OPTIONS suffix (generation, turned)
    for values, key, h, style in zip(fields_of(compiled, chunk), keys, hashes, styles):
        picks = shots.picks(key, h) if shots is not None else ()
        for t in templates:
            r = compiled.render(values, t, mode=mode,  # type: ignore[arg-type]
                                options_format=fmt, key=key, style=style)
            if shots is not None:
                r = shots.prefix(r, picks, style)
            add_eval_row(rows, compiled.spec.name, split, key, r)
            used.append(style if r.options else None)
    table = pa.table(rows, schema=EVAL_SCHEMA)
    if fmt.varied:
        for field, styles_of_kind, at in ((STYLE_FIELDS[0], fmt.headers, 0), (STYLE_FIELDS[1], fmt.items, 1)):
            table = table.append_column(field, pa.array([None if u is None else styles_of_kind[u[at]] for u in used],
                                                        pa.string()))
    return table


def eval_schema(fmt: OptionsFormat) -> pa.Schema:
    """The eval rows' schema: EVAL_SCHEMA, plus the option style columns when ``fmt`` lists several styles."""
    return pa.schema(list(EVAL_SCHEMA) + STYLE_FIELDS) if fmt.varied else EVAL_SCHEMA


def add_eval_row(rows: dict[str, list[Any]], dataset: str, split: str, key: str, r: Rendered) -> None:
    """Append one rendered eval example to ``rows`` (EVAL_SCHEMA's columns), with its answer index."""
    answer = r.options.index(r.targets) if r.options else -1
    for name, value in (("dataset", dataset), ("split", split), ("example_key", key), ("template", r.template),
                        ("turned", r.turned), ("inputs", r.inputs), ("targets", r.targets),
                        ("options", list(r.options)), ("answer_index", answer)):
        rows[name].append(value)


# ------------------------------------------------------------------ the stage's units
def exemplars(job: DatasetJob, mode: str) -> Exemplars | None:
    """The few-shot pool of a dataset, when the pipeline is few-shot and the dataset has train examples."""
    if job.settings.fewshot is None or "train" not in job.spec.source.splits:
        return None
    from_store = job.entry.fields("train", 0)
    if not storage.exists(from_store):
        return None  # no kept train example: zero-shot rows
    return Exemplars(job.compiled, read_table(from_store), job.settings, job.tokenizer, mode)


def render_unit(job: DatasetJob, split: str, chunk: int, variant: int) -> dict[str, Any]:
    """Render one stored chunk (train: variant ``variant``; eval splits: all templates, and few-shot ones) once.

    Returns the chunk's statistics; a chunk already in the store is not rendered again.
    """
    entry = job.entry
    target = entry.rendered(variant, chunk) if split == "train" else entry.evaluated(split, chunk)
    done = read_stats(target)
    if done is not None:
        return done
    start, cpu = time.perf_counter(), time.process_time()
    fields = load_chunk(job, split, chunk)
    if split == "train":
        shots = exemplars(job, job.settings.instructions)
        table = render_train(job.compiled, fields, variant, job.settings, job.tokenizer, shots=shots)
        # What the example takes in a row (after truncation, EOS and BOS included): sizes the mixture in tokens.
        n_in = np.asarray(table.column("input_ids").combine_chunks().value_lengths())
        n_out = np.asarray(table.column("target_ids").combine_chunks().value_lengths())
        bos = int(job.tokenizer.special.bos is not None)
        lengths = (np.minimum(n_in, job.settings.inputs_length - 1 - bos) + bos
                   + np.minimum(n_out, job.settings.targets_length - 1) + 2)
        write_table(target, table)
        # The ids in the table are this tokenizer's (the entry's key hashes the same identity).
        stats = {"rows": table.num_rows, "tokens": int(lengths.sum()), "tokenizer": job.tokenizer.identity}
    else:
        table = render_eval(job.compiled, split, fields, job.settings)
        write_table(target, table)
        shots = exemplars(job, job.settings.eval_instructions)
        if shots is not None:
            write_table(entry.evaluated(split, chunk, fewshot=True),
                        render_eval(job.compiled, split, fields, job.settings, shots=shots))
        stats = {"rows": table.num_rows, "examples": fields.num_rows}
    stats.update(dataset=job.name, split=split, chunk=chunk, variant=variant, examples=fields.num_rows,
                 seconds=round(time.perf_counter() - start, 4), cpu_seconds=round(time.process_time() - cpu, 4))
    write_stats(target, stats)  # last: its presence means the chunk is complete
    return stats
