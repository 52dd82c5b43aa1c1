"""Deterministic synthetic full-size FLAN 2021 source data, in the bundled-samples layout, for compile benchmarks."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from functools import lru_cache
from json.encoder import encode_basestring  # C-accelerated; keeps non-ASCII as the samples do
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # runnable as a plain script from any directory
    sys.path.insert(0, str(REPO))

from flanpipe.collection import load_collection  # noqa: E402
from flanpipe.sources import SAMPLES_DIR  # noqa: E402
from flanpipe.spec import DatasetSpec  # noqa: E402

FORMAT_VERSION = 1
COMPLETE = ".complete.json"
Progress = Callable[[str, str, int, int], None]  # (dataset, split, examples, bytes) after each file

# Real TFDS split sizes, keyed by builder[/config] (version dropped).
TFDS_SIZES: dict[str, dict[str, int]] = {
    "aeslc": {"train": 14436, "validation": 1960, "test": 1906},
    "ag_news_subset": {"train": 120000, "test": 7600},
    "anli/r1": {"train": 16946, "validation": 1000, "test": 1000},
    "anli/r2": {"train": 45460, "validation": 1000, "test": 1000},
    "anli/r3": {"train": 100459, "validation": 1200, "test": 1200},
    "ai2_arc/ARC-Challenge": {"train": 1119, "validation": 299, "test": 1172},
    "ai2_arc/ARC-Easy": {"train": 2251, "validation": 570, "test": 2376},
    "bool_q": {"train": 9427, "validation": 3270},
    "super_glue/cb": {"train": 250, "validation": 56, "test": 250},
    "cnn_dailymail": {"train": 287113, "validation": 13368, "test": 11490},
    "glue/cola": {"train": 8551, "validation": 1043, "test": 1063},
    "gem/common_gen": {"train": 67389, "validation": 4018, "test": 1497},
    "super_glue/copa": {"train": 400, "validation": 100, "test": 500},
    "coqa": {"train": 7199, "test": 500},
    "cosmos_qa": {"train": 25262, "validation": 2985, "test": 6963},
    "gem/dart": {"train": 62659, "validation": 2768, "test": 5097},
    "definite_pronoun_resolution": {"train": 1322, "test": 564},
    "drop": {"train": 77409, "dev": 9536},
    "gem/e2e_nlg": {"train": 33525, "validation": 4299, "test": 4693},
    "para_crawl/enda": {"train": 2414895},
    "gigaword": {"train": 3803957, "validation": 189651, "test": 1951},
    "glue/mrpc": {"train": 3668, "validation": 408, "test": 1725},
    "glue/qqp": {"train": 363846, "validation": 40430, "test": 390965},
    "hellaswag": {"train": 39905, "validation": 10042, "test": 10003},
    "imdb_reviews": {"train": 25000, "test": 25000},
    "math_dataset/algebra__linear_1d": {"train": 1999998, "test": 10000},
    "glue/mnli": {"train": 392702, "validation_matched": 9815, "validation_mismatched": 9832},
    "multi_news": {"train": 44972, "validation": 5622, "test": 5622},
    "super_glue/multirc": {"train": 27243, "validation": 4848, "test": 9693},
    "natural_questions_open": {"train": 87925, "validation": 3610},
    "newsroom": {"train": 995041, "validation": 108837, "test": 108862},
    "openbookqa": {"train": 4957, "validation": 500, "test": 500},
    "opinion_abstracts/idebate": {"train": 2259},
    "opinion_abstracts/rotten_tomatoes": {"train": 3731},
    "para_crawl/enes": {"train": 21987267},
    "paws_wiki": {"train": 49401, "validation": 8000, "test": 8000},
    "piqa": {"train": 16113, "validation": 1838},
    "glue/qnli": {"train": 104743, "validation": 5463, "test": 5463},
    "quac": {"train": 83568, "validation": 7354},
    "super_glue/record": {"train": 100730, "validation": 10000, "test": 10000},
    "super_glue/rte": {"train": 2490, "validation": 277, "test": 3000},
    "samsum": {"train": 14732, "validation": 818, "test": 819},
    "sentiment140": {"train": 1600000, "test": 498},
    "snli": {"train": 550152, "validation": 9842, "test": 9824},
    "squad/v1.1": {"train": 87599, "validation": 10570},
    "squad/v2.0": {"train": 130319, "validation": 11873},
    "glue/sst2": {"train": 67349, "validation": 872, "test": 1821},
    "story_cloze/2016": {"validation": 1871, "test": 1871},
    "glue/stsb": {"train": 5749, "validation": 1500, "test": 1379},
    "trec": {"train": 5452, "test": 500},
    "trivia_qa/rc": {"train": 138384, "validation": 18669, "test": 17210},
    "gem/web_nlg_en": {"train": 35426, "validation": 1667, "test": 1779},
    "super_glue/wic": {"train": 5428, "validation": 638, "test": 1400},
    "gem/wiki_lingua_english_en": {"train": 99020, "validation": 13823, "test": 28614},
    "winogrande": {"train_xl": 40398, "validation": 1267, "test": 1767},
    "wmt14_translate/fr-en": {"train": 40836715, "validation": 3000, "test": 3003},
    "wmt16_translate/cs-en": {"train": 997712, "validation": 2656, "test": 2999},
    "wmt16_translate/de-en": {"train": 4548885, "validation": 2169, "test": 2999},
    "wmt16_translate/fi-en": {"train": 2073394, "validation": 1370, "test": 3000},
    "wmt16_translate/ro-en": {"train": 610320, "validation": 1999, "test": 1999},
    "wmt16_translate/ru-en": {"train": 1516162, "validation": 2818, "test": 2998},
    "wmt16_translate/tr-en": {"train": 205756, "validation": 1001, "test": 3000},
    "glue/wnli": {"train": 635, "validation": 71, "test": 146},
    "super_glue/wsc": {"train": 554, "validation": 104, "test": 146},
    "wsc273": {"test": 273},
    "xsum": {"train": 204045, "validation": 11332, "test": 11334},
    "yelp_polarity_reviews": {"train": 560000, "test": 38000},
}

# Mean words of a dataset's longest field in the real data. The expansion factor stretches
# that field (and, for sentence-pair data, every field) to it; other fields keep their
# bundled length, since e.g. stretching multi_news summaries with their documents would
# make targets 5x too long.
REAL_WORDS: dict[str, int] = {
    "cnn_dailymail": 700, "xsum": 430, "multi_news": 2000, "newsroom": 650, "wiki_lingua_english_en": 400,
    "samsum": 100, "aeslc": 140, "gigaword": 30, "ag_news_subset": 40,
    "opinion_abstracts_idebate": 300, "opinion_abstracts_rotten_tomatoes": 250,
    "squad_v1": 120, "squad_v2": 120, "drop": 200, "bool_q": 100, "multirc": 250, "quac": 400,
    "coqa": 350, "record": 250, "cosmos_qa": 70, "imdb_reviews": 230, "yelp_polarity_reviews": 130,
    **{name: 25 for name in ("para_crawl_enes", "wmt14_enfr", "wmt16_translate_csen", "wmt16_translate_deen",
                             "wmt16_translate_fien", "wmt16_translate_roen", "wmt16_translate_ruen",
                             "wmt16_translate_tren", "fix_punct", "true_case", "word_segment")},
}
# Parallel text: both sides are real sentences of about the same length, so both stretch.
EXPAND_ALL = {name for name, words in REAL_WORDS.items() if words == 25}

# Structured strings the field expressions parse (meaning representations, triples, equations,
# dates) and categories of four or more words: kept, except that their digits are redrawn, which
# keeps lengths real and examples distinct.
SHAPED: dict[str, set[str]] = {
    "e2e_nlg": {"meaning_representation"},
    "dart": {"tripleset"},
    "web_nlg_en": {"input"},
    "math_dataset": {"question"},
    "sentiment140": {"date"},
    "hellaswag": {"activity_label"},
}
# (text feature, start feature, end feature): a character span the fields slice by offset; the
# span's text is kept and the offsets are recomputed on the synthetic text.
SPANS: dict[str, tuple[str, str, str]] = {"wsc273": ("text", "pronoun_start", "pronoun_end")}

# Substrings with meaning to templates, filters or readers, kept verbatim inside rewritten text.
_MARKERS = re.compile(
    r"@placeholder|@highlight|\|{3,}|CANNOTANSWER"
    r"|<b>Sent \d+: </b>|</?[A-Za-z][^<>\n]{0,40}>"  # multirc / imdb markup
    r"|\[[^\[\]\n]{1,40}\]"  # hellaswag [header]-style tags
    r"|(?<![\w])_(?:'s)?(?![\w])"  # winogrande blank
    r"|\\n|\s*\n\s*"  # literal backslash-n (yelp) and line breaks
    r"|(?:^|(?<=\n))[A-Z][\w'.-]{0,20}(?: [A-Z][\w'.-]{0,20})?: (?=\S)"  # dialogue speakers
)
_EDGES = re.compile(r"^(\W*)(.*?)(\W*)$", re.S)
_WORD = re.compile(r"[^\W\d_]+(?:['’-][^\W\d_]+)*")
_LANG = re.compile(r"^(?!id$|en$)[a-z]{2}$")  # a foreign side of parallel text (fr, de, ru, da, ...)
_SLICE = re.compile(r"^(\w+)(?:\[(-?\d*):(-?\d*)\])?$")
_SLOT = re.compile(r'"\\u0000(\d+)\\u0000"')
_GLOBAL = "*"  # name of the shared vocabulary


# ------------------------------------------------------------------------------------ sizes
@lru_cache(maxsize=1)
def _datasets() -> dict[str, DatasetSpec]:
    """FLAN 2021's datasets: those of the taxonomy's default clusters (opt-in ones, chain_of_thought, are Flan 2022's)."""
    collection = load_collection()
    tax = collection.taxonomy
    names = {d for c in tax.default_clusters() for d in tax.clusters[c].datasets + tax.clusters[c].eval_only}
    return {name: spec for name, spec in sorted(collection.datasets.items()) if name in names}


def real_sizes(spec: DatasetSpec) -> dict[str, int]:
    """The real split sizes of the dataset's TFDS builder (matched on builder/config, then builder)."""
    name = spec.source.tfds.split(":")[0]
    while name not in TFDS_SIZES and "/" in name:
        name = name.rsplit("/", 1)[0]
    if name not in TFDS_SIZES:
        raise KeyError(f"{spec.name}: no real split sizes for TFDS builder {spec.source.tfds!r}")
    return TFDS_SIZES[name]


def slice_size(expression: str, real: dict[str, int]) -> int:
    """Examples selected by a TFDS slice such as 'train[:-200]' (absolute indices only)."""
    m = _SLICE.match(expression.replace(" ", ""))
    if m is None:
        raise ValueError(f"unsupported split expression {expression!r}")
    split, start, stop = m.groups()
    n = real[split]
    if m.group(2) is None:
        return n
    return len(range(n)[slice(int(start) if start else None, int(stop) if stop else None)])


def sizes(fraction: float = 1.0) -> dict[str, dict[str, int]]:
    """Examples to generate per dataset and split: the sliced real size times ``fraction``
    (rounded; at least 40 for train and 10 for eval splits, and never more than the real slice)."""
    out: dict[str, dict[str, int]] = {}
    for name, spec in _datasets().items():
        real = real_sizes(spec)
        out[name] = {}
        for split, expression in spec.source.splits.items():
            n = slice_size(expression, real)
            floor = 40 if split == "train" else 10
            out[name][split] = min(n, max(floor, round(n * fraction)))
    return out


# ------------------------------------------------------------------------------- vocabulary
def _rows(name: str, split: str) -> list[dict[str, Any]]:
    path = SAMPLES_DIR / name / f"{split}.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _leaves(node: Any, path: str = "") -> Iterable[tuple[str, Any]]:
    """(feature path without list indices, leaf) for every leaf."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _leaves(v, f"{path}/{k}" if path else k)
    elif isinstance(node, list):
        for v in node:
            yield from _leaves(v, path)
    else:
        yield path, node


def _vocab_name(dataset: str, path: str) -> str:
    top = path.split("/")[0]
    return f"{dataset}:{top}" if _LANG.match(top) else _GLOBAL


@lru_cache(maxsize=1)
def vocabularies() -> dict[str, tuple[str, ...]]:
    """Every word of the bundled samples, most frequent first: one shared English vocabulary plus
    one per foreign side of parallel text (so Cyrillic stays Cyrillic for the tokenizer)."""
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for name, spec in _datasets().items():
        for split in spec.source.splits:
            for row in _rows(name, split):
                for path, leaf in _leaves(row):
                    # Single-token strings are ids and labels, markup is not vocabulary either.
                    if isinstance(leaf, str) and " " in leaf.strip():
                        counts[_vocab_name(name, path)].update(_WORD.findall(_MARKERS.sub(" ", leaf)))
    vocabs = {}
    for vname, counter in sorted(counts.items()):
        # Fold sentence-initial capitals into the lowercase word; keep names that are only capitalised.
        folded: Counter[str] = Counter()
        for word, c in counter.items():
            low = word[:1].lower() + word[1:]
            folded[low if low != word and low in counter and word != "I" else word] += c
        vocabs[vname] = tuple(w for w, _ in sorted(folded.items(), key=lambda wc: (-wc[1], wc[0])))
    return vocabs


class _Stream:
    """An endless run of synthetic prose (Zipf-distributed words, sentences, commas) handed out
    n words at a time; assembled with numpy in chunks, so the per-string cost is one slice."""

    def __init__(self, words: tuple[str, ...], rng: np.random.Generator, chunk: int):
        self.rng = rng
        self.chunk = chunk
        ranks = np.arange(len(words), dtype=np.float64)
        cdf = np.cumsum(1.0 / (ranks + 2.7) ** 1.05)  # Zipf-Mandelbrot over frequency rank
        self.cdf = cdf / cdf[-1]
        self.v = len(words)
        # Piece table: words, then their capitalised forms, then separators.
        pieces = [w.encode() for w in words] + [(w[:1].upper() + w[1:]).encode() for w in words]
        pieces += [b" ", b", ", b". "]
        self.sep = 2 * self.v
        lengths = np.array([len(p) for p in pieces], dtype=np.int64)
        self.piece_len = lengths
        self.piece_off = np.concatenate(([0], np.cumsum(lengths)[:-1]))
        self.piece_buf = np.frombuffer(b"".join(pieces), dtype=np.uint8)
        self.buf = b""
        self.starts: list[int] = []
        self.ends: list[int] = []
        self.pos = 0

    def _refill(self, need: int) -> None:
        m = max(self.chunk, need)
        rng = self.rng
        word = np.searchsorted(self.cdf, rng.random(m)).astype(np.int64)
        np.minimum(word, self.v - 1, out=word)
        # Sentence ends after 6..30 words; the next word is capitalised.
        lengths = rng.integers(6, 31, size=m // 6 + 2)
        ends = np.cumsum(lengths) - 1
        ends = ends[ends < m]
        sep = np.where(rng.random(m) < 0.06, self.sep + 1, self.sep)
        sep[ends] = self.sep + 2
        first = np.concatenate(([0], ends[ends < m - 1] + 1))
        word[first] += self.v
        tokens = np.empty(2 * m, dtype=np.int64)
        tokens[0::2], tokens[1::2] = word, sep
        lens = self.piece_len[tokens]
        out_start = np.cumsum(lens) - lens
        total = int(out_start[-1] + lens[-1])
        src = np.repeat(self.piece_off[tokens] - out_start, lens) + np.arange(total, dtype=np.int64)
        self.buf = self.piece_buf[src].tobytes()
        self.starts = out_start[0::2].tolist()
        self.ends = (out_start[0::2] + lens[0::2]).tolist()
        self.pos = 0

    def take(self, n: int) -> str:
        """The next ``n`` words as text (no trailing separator)."""
        p = self.pos
        if p + n > len(self.starts):
            self._refill(n)
            p = 0
        self.pos = p + n
        return self.buf[self.starts[p]:self.ends[p + n - 1]].decode()

    def digits(self, n: int) -> str:
        return "".join(map(str, self.rng.integers(0, 10, size=n).tolist()))


# ------------------------------------------------------------------------------- prototypes
@dataclass
class _Segment:
    """Prose between markers: its edges are kept, its words regenerated."""

    lead: str
    words: int
    trail: str
    upper: bool


@dataclass
class _Leaf:
    """One distinct rewritten string of a prototype (identical strings share a leaf, so answers
    stay members of their option lists)."""

    parts: list[str | _Segment]
    stream: str
    factor: float = 1.0
    shaped: bool = False  # keep the text, redraw its digits
    span_part: int = -1  # index of the part whose offsets SPANS features report


@dataclass
class _Proto:
    chunks: list[str]  # JSON text around the slots
    slots: list[tuple[str, int]]  # ("leaf", i) | ("key", 0) | ("start"/"end", i)
    leaves: list[_Leaf]


def _prose(text: str) -> list[str | _Segment]:
    parts: list[str | _Segment] = []
    at = 0
    for m in [*_MARKERS.finditer(text), None]:
        piece = text[at:m.start()] if m else text[at:]
        if piece:
            lead, core, trail = _EDGES.match(piece).groups()  # type: ignore[union-attr]
            n = len(core.split())
            parts.append(_Segment(lead, n, trail, core[:1].isupper()) if n else piece)
        if m:
            parts.append(m.group())
            at = m.end()
    return parts


def _compile(row: dict[str, Any], dataset: str, key: str | None, factor: float, expand: set[str] | None) -> _Proto:
    """Turn a bundled example into JSON text with slots for its key and rewritten strings."""
    leaves: list[_Leaf] = []
    by_text: dict[str, int] = {}
    slots: list[tuple[str, int]] = []
    span = SPANS.get(dataset)
    shaped = SHAPED.get(dataset, set())

    def slot(kind: str, index: int) -> str:
        slots.append((kind, index))
        return f"\0{len(slots) - 1}\0"

    def walk(node: Any, path: str) -> Any:
        if isinstance(node, dict):
            return {k: walk(v, f"{path}/{k}" if path else k) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v, path) for v in node]
        if path == key:
            return slot("key", 0)
        if span and path in span[1:]:
            return slot("start" if path == span[1] else "end", -1)  # leaf index filled in below
        if not isinstance(node, str):
            return node
        f = factor if expand is None or path in expand else 1.0
        if span and path == span[0]:  # before the sharing below: the offsets must point at this leaf
            start, end = row[span[1]], row[span[2]]
            before, after = _prose(node[:start]), _prose(node[end:])
            by_text[node] = len(leaves)
            leaves.append(_Leaf([*before, node[start:end], *after], _vocab_name(dataset, path), f,
                                span_part=len(before)))
            return slot("leaf", by_text[node])
        if node in by_text:
            leaves[by_text[node]].factor = max(leaves[by_text[node]].factor, f)
            return slot("leaf", by_text[node])
        if path in shaped:
            if not any(c.isdigit() for c in node):
                return node
            leaf = _Leaf([node], _GLOBAL, shaped=True)
        elif len(node.split()) >= 4:
            leaf = _Leaf(_prose(node), _vocab_name(dataset, path), f)
        else:
            return node
        by_text[node] = len(leaves)
        leaves.append(leaf)
        return slot("leaf", by_text[node])

    text = json.dumps(walk(row, ""), ensure_ascii=False)
    if span:
        slots = [(kind, by_text[row[span[0]]] if kind in ("start", "end") else a) for kind, a in slots]
    pieces = _SLOT.split(text)
    order = [int(i) for i in pieces[1::2]]
    return _Proto(pieces[0::2], [slots[i] for i in order], leaves)


def _field_words(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Mean words per example of every feature path (list items summed)."""
    total: Counter[str] = Counter()
    for row in rows:
        for path, leaf in _leaves(row):
            if isinstance(leaf, str):
                total[path] += len(leaf.split())
    return {p: c / max(1, len(rows)) for p, c in total.items()}


def expansion(name: str) -> tuple[float, set[str] | None, str]:
    """(factor, fields it applies to (None = all), longest field) for one dataset."""
    spec = _datasets()[name]
    rows = _rows(name, "train") or _rows(name, next(iter(spec.source.splits)))
    means = _field_words(rows)
    longest = max(means, key=lambda p: (means[p], p))
    factor = max(1.0, REAL_WORDS.get(name, 0) / means[longest]) if means[longest] else 1.0
    # Near-ties are copies or parallel views of the same text (wiki_lingua source, source_aligned/en).
    long_fields = {p for p, words in means.items() if words >= 0.9 * means[longest]}
    return factor, (None if name in EXPAND_ALL else long_fields), longest


# ------------------------------------------------------------------------------- generation
@dataclass(frozen=True)
class _Job:
    dataset: str
    split: str
    n: int
    seed: int
    key: str | None
    rows: list[dict[str, Any]]
    factor: float
    expand: set[str] | None
    path: str

    def weight(self) -> float:
        """Rough output size, to start the biggest files first."""
        return self.n * self.factor * sum(_field_words(self.rows).values())


def _seed(seed: int, dataset: str, split: str) -> int:
    # hashlib, not hash(): stable across processes and runs
    return int.from_bytes(hashlib.sha256(f"{seed}/{dataset}/{split}".encode()).digest()[:8], "little")


def _build(leaf: _Leaf, streams: dict[str, _Stream], scale: float) -> list[str]:
    stream = streams[leaf.stream]
    if leaf.shaped:  # int() drops a drawn leading zero, so "05" never appears where "35" was
        return [re.sub(r"\d+", lambda m: str(int(stream.digits(len(m.group())))), str(leaf.parts[0]))]
    out: list[str] = []
    grow = leaf.factor * scale
    for part in leaf.parts:
        if isinstance(part, str):
            out.append(part)
            continue
        text = stream.take(max(1, round(part.words * grow)))
        first = text[0]
        if part.upper != first.isupper():
            text = (first.upper() if part.upper else first.lower()) + text[1:]
        out.append(part.lead + text + part.trail)
    return out


def _write(job: _Job) -> tuple[str, str, int, int]:
    """Generate and atomically write one split file; returns (dataset, split, examples, bytes)."""
    protos = [_compile(r, job.dataset, job.key, job.factor, job.expand) for r in job.rows]
    vocabs = vocabularies()
    names = sorted({leaf.stream for p in protos for leaf in p.leaves} | {_GLOBAL})
    seq = np.random.SeedSequence(_seed(job.seed, job.dataset, job.split))
    rng, *text_rngs = [np.random.default_rng(s) for s in seq.spawn(1 + len(names))]
    # Size stream chunks to the split so small eval splits do not assemble a large chunk.
    per_example = sum(
        seg.words * leaf.factor for p in protos for leaf in p.leaves for seg in leaf.parts if isinstance(seg, _Segment))
    chunk = int(min(1 << 20, max(4096, 1.1 * job.n * per_example / len(protos))))
    streams = {n: _Stream(vocabs.get(n) or vocabs[_GLOBAL], r, chunk) for n, r in zip(names, text_rngs)}
    scales = rng.uniform(0.5, 1.5, job.n).tolist()
    int_key = isinstance(_key_of(job.rows[0], job.key), int) if job.key else False
    target = Path(job.path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    lines: list[str] = []
    with tmp.open("w", encoding="utf-8", newline="\n") as f:
        for i in range(job.n):
            proto = protos[i % len(protos)]
            built = [_build(leaf, streams, scales[i]) for leaf in proto.leaves]
            pieces = [proto.chunks[0]]
            for (kind, a), chunk_text in zip(proto.slots, proto.chunks[1:]):
                if kind == "leaf":
                    pieces.append(encode_basestring("".join(built[a])))
                elif kind == "key":
                    pieces.append(str(i) if int_key else f'"{job.split}-{i}"')
                else:  # span offsets, in characters as Python slices them
                    parts = built[a]
                    start = sum(len(p) for p in parts[:proto.leaves[a].span_part])
                    pieces.append(str(start if kind == "start" else start + len(parts[proto.leaves[a].span_part])))
                pieces.append(chunk_text)
            pieces.append("\n")
            lines.append("".join(pieces))
            if len(lines) >= 2048:
                f.write("".join(lines))
                lines.clear()
        f.write("".join(lines))
    os.replace(tmp, target)
    return job.dataset, job.split, job.n, target.stat().st_size


def _key_of(row: dict[str, Any], key: str) -> Any:
    node: Any = row
    for part in key.split("/"):
        node = node[part]
    return node


def _jobs(out: Path, plan: dict[str, dict[str, int]], seed: int) -> list[_Job]:
    jobs = []
    for name, splits in plan.items():
        spec = _datasets()[name]
        factor, expand, _ = expansion(name)
        fallback = _rows(name, "train")
        for split, n in splits.items():
            rows = _rows(name, split) or fallback
            if not rows:
                raise FileNotFoundError(f"no bundled samples for {name} {split} (nor train) to copy")
            jobs.append(_Job(name, split, n, seed, spec.source.key, rows, factor, expand,
                             str(out / name / f"{split}.jsonl")))
    return jobs


def _inputs_digest() -> str:
    """Changes whenever this generator, the bundled samples or the datasets' sources change."""
    h = hashlib.sha256(Path(__file__).read_bytes())
    for path in sorted(SAMPLES_DIR.glob("*/*.jsonl")):
        h.update(str(path.relative_to(SAMPLES_DIR)).encode() + b"\0" + path.read_bytes())
    for name, spec in _datasets().items():
        h.update(json.dumps([name, spec.source.tfds, spec.source.splits, spec.source.key]).encode())
    return h.hexdigest()


def generate(out: Path, *, fraction: float = 1.0, seed: int = 0, progress: Progress | None = None,
             workers: int | None = None) -> dict[str, Any]:
    """Write ``out/<dataset>/<split>.jsonl`` for every dataset of the collection, then ``out/.complete.json``.

    A directory completed with the same fraction, seed, format, samples and generator is reused.
    Returns {"counts": {dataset: {split: n}}, "bytes": total, "train_examples": n, "seconds": s,
    "reused": bool}. ``workers`` processes share the files (default: up to 2; 1 runs in-process).
    """
    out = Path(out)
    plan = sizes(fraction)
    want = {"format": FORMAT_VERSION, "seed": seed, "fraction": fraction, "inputs": _inputs_digest()}
    marker = out / COMPLETE
    if marker.exists():
        done = json.loads(marker.read_text())
        files = all((out / d / f"{s}.jsonl").exists() for d, ss in plan.items() for s in ss)
        if files and done.get("counts") == plan and all(done.get(k) == v for k, v in want.items()):
            return {**done["result"], "reused": True}
        marker.unlink()  # about to overwrite: never leave a stale "complete" behind
    start = time.perf_counter()
    jobs = sorted(_jobs(out, plan, seed), key=lambda j: -j.weight())
    workers = workers or min(2, os.cpu_count() or 1)
    written: dict[tuple[str, str], int] = {}

    def done(result: tuple[str, str, int, int]) -> None:
        written[result[:2]] = result[3]
        if progress:
            progress(*result)

    if workers == 1:
        for job in jobs:
            done(_write(job))
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for future in as_completed([pool.submit(_write, job) for job in jobs]):
                done(future.result())
    result = {
        "counts": plan,
        "bytes": sum(written.values()),
        "train_examples": sum(s.get("train", 0) for s in plan.values()),
        "seconds": round(time.perf_counter() - start, 1),
    }
    tmp = out / f".{COMPLETE}.tmp"
    tmp.write_text(json.dumps({**want, "counts": plan, "result": result}, indent=1, sort_keys=True))
    os.replace(tmp, marker)
    return {**result, "reused": False}


# ------------------------------------------------------------------------------------ stats
def longest_field_words(out: Path, *, limit: int = 2000) -> dict[str, tuple[str, float]]:
    """Per dataset, its longest field and mean words, over the first ``limit`` train examples."""
    stats = {}
    for name, spec in _datasets().items():
        split = "train" if "train" in spec.source.splits else next(iter(spec.source.splits))
        with (Path(out) / name / f"{split}.jsonl").open(encoding="utf-8") as f:
            rows = [json.loads(line) for _, line in zip(range(limit), f)]
        means = _field_words(rows)
        longest = max(means, key=lambda p: (means[p], p))
        stats[name] = (longest, means[longest])
    return stats


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--fraction", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--quiet", action="store_true", help="no per-file lines")
    args = ap.parse_args(argv)
    plan = sizes(args.fraction)
    train = sum(s.get("train", 0) for s in plan.values())
    print(f"{len(plan)} datasets, {train:,} train examples, "
          f"{sum(sum(s.values()) for s in plan.values()):,} in all splits")

    def report(dataset: str, split: str, n: int, nbytes: int) -> None:
        if not args.quiet:
            print(f"  {dataset}/{split}: {n:,} examples, {nbytes / 2**20:,.1f} MiB", flush=True)

    result = generate(args.out, fraction=args.fraction, seed=args.seed, progress=report, workers=args.workers)
    state = "reused" if result["reused"] else f"generated in {result['seconds']:.1f} s"
    print(f"{args.out}: {state}; {result['bytes'] / 2**30:.2f} GiB")
    clusters: dict[str, list[float]] = defaultdict(list)
    for name, (path, words) in longest_field_words(args.out).items():
        clusters[_datasets()[name].cluster].append(words)
    print("mean words of the longest field (first 2000 train examples), per cluster:")
    for cluster, words in sorted(clusters.items()):
        print(f"  {cluster:40s} {np.mean(words):7.0f}  ({len(words)} datasets)")


if __name__ == "__main__":
    main()
