"""Statistics of one compiled split: planned vs realized counts, lengths, truncation, packing, templates, options."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from flanpipe.spec import OptionsFormat
from flanpipe.templates import option_item, options_suffix

# Columns of examples/*.parquet the statistics need (the text columns stay out of memory).
SMALL_COLUMNS = ("dataset", "cluster", "example_key", "variant", "template", "turned", "input_tokens",
                 "target_tokens", "input_truncated", "target_truncated")
HISTOGRAM_BINS = 32
MAX_LISTED = 50  # example ids listed per dataset (e.g. targets cut); counts are always complete


def split_options(inputs: str, fmt: OptionsFormat) -> tuple[str, list[str] | None]:
    """Split a rendered input into (body, options); options is None when it has no OPTIONS suffix.

    The suffix is parsed with each of the pipeline's ``options_format`` headers and item styles (the
    last header in the input wins) and accepted only when re-rendering the parsed options gives back
    exactly the same suffix, so an input that merely mentions the header text is not mistaken for one
    with options.

    Example:
      >>> fmt = OptionsFormat(header="\\n\\nOPTIONS:", item="\\n- {option}")
      >>> split_options("Is it?\\n\\nOPTIONS:\\n- yes\\n- no", fmt)
      ('Is it?', ['yes', 'no'])
    """
    found: tuple[int, list[str]] | None = None
    for h, header in enumerate(fmt.headers):
        at = inputs.rfind(header) if header else -1
        if at < 0 or (found is not None and at <= found[0]):
            continue
        for i in range(len(fmt.items)):
            options = _parse_items(inputs[at + len(header):], fmt.items[i])
            if options is not None and inputs[at:] == options_suffix(options, fmt, (h, i)):
                found = (at, options)
                break
    return (inputs, None) if found is None else (inputs[:found[0]], found[1])


def _parse_items(rest: str, item: str) -> list[str] | None:
    """The options of a suffix body written in item style ``item`` (markers such as {letter} rendered per
    position), or None when it does not start like one; the caller re-renders to confirm."""
    pre, post = item.split("{option}", 1)
    options: list[str] = []
    while True:
        start = option_item(pre, len(options), "")
        if not rest.startswith(start):
            return None
        rest = rest[len(start):]
        end = option_item(post, len(options), "")
        following = end + option_item(pre, len(options) + 1, "")
        cut = rest.find(following) if following else -1
        if cut < 0:  # the last option
            if end and not rest.endswith(end):
                return None
            options.append(rest[:len(rest) - len(end)])
            return options
        options.append(rest[:cut])
        rest = rest[cut + len(end):]


def distribution(values: np.ndarray, edges: np.ndarray | None = None) -> dict[str, Any]:
    """count, mean, min, p50, p90, p99 and max of ``values`` (and a histogram over ``edges`` if given)."""
    out: dict[str, Any] = {"count": int(len(values))}
    if len(values) == 0:
        out.update(mean=None, min=None, p50=None, p90=None, p99=None, max=None)
    else:
        p50, p90, p99 = np.percentile(values, [50, 90, 99])
        out.update(mean=round(float(values.mean()), 3), min=int(values.min()), p50=float(p50), p90=float(p90),
                   p99=float(p99), max=int(values.max()))
    if edges is not None:
        counts, _ = np.histogram(values, bins=edges)
        out["histogram"] = {"edges": [int(e) for e in edges], "counts": counts.tolist()}
    return out


def length_edges(maximum: int, bins: int = HISTOGRAM_BINS) -> np.ndarray:
    """Integer histogram edges covering 0..maximum (token lengths include the EOS); one bin per length if few."""
    if maximum + 1 <= bins:
        return np.arange(0, maximum + 2, dtype=np.int64)
    return np.unique(np.linspace(0, maximum + 1, bins + 1).round().astype(np.int64))


def option_balance(labels: Mapping[str, int], positions: Mapping[int, int]) -> dict[str, Any]:
    """How evenly classification targets spread over options: by option text and by option position.

    ``majority_share`` is the share of the most common answer; ``entropy_ratio`` is the entropy of the
    answer distribution over the entropy of a uniform one (1.0 = perfectly balanced).
    """
    total = sum(labels.values())
    counts = np.array(list(labels.values()), dtype=np.float64)
    entropy = 0.0
    if total and len(counts) > 1:
        p = counts[counts > 0] / total
        entropy = float(-(p * np.log(p)).sum() / math.log(len(counts)))
    top = sorted(labels.items(), key=lambda kv: (-kv[1], kv[0]))
    return {"rows": total, "labels": dict(top[:20]), "distinct_labels": len(labels),
            "positions": {str(k): v for k, v in sorted(positions.items())},
            "majority_share": round(top[0][1] / total, 4) if total else None,
            "entropy_ratio": round(entropy, 4) if total else None}


# The token feature beside each segment-id feature of a packed row (flanpipe.schema's names).
PACKED_TOKENS = {"decoder": "decoder_target_tokens", "encoder": "encoder_input_tokens"}


class SplitStats:
    """Accumulates one split's statistics shard by shard; ``result`` turns them into the audit's JSON."""

    def __init__(self, manifest: Mapping[str, Any], fmt: OptionsFormat, clusters: Mapping[str, str]):
        self.manifest, self.fmt, self.clusters = manifest, fmt, clusters
        self.tables: list[pa.Table] = []
        self.labels: dict[str, Counter[str]] = defaultdict(Counter)
        self.positions: dict[str, Counter[int]] = defaultdict(Counter)
        self.shards: list[dict[str, Any]] = []
        self.eval: dict[str, dict[str, Any]] = {}
        self.bad_padding = 0  # padding positions (segment 0) whose token is not the manifest's pad_id

    def add_examples(self, table: pa.Table) -> None:
        """One examples/*.parquet shard (with its text columns, used for the option balance)."""
        self.tables.append(table.select(list(SMALL_COLUMNS) + (["format"] if "format" in table.column_names else [])))
        for dataset, inputs, targets, turned in zip(table["dataset"].to_pylist(), table["inputs"].to_pylist(),
                                                    table["targets"].to_pylist(), table["turned"].to_pylist()):
            if turned:
                continue
            _, options = split_options(inputs, self.fmt)
            if options is not None:
                self.labels[dataset][targets] += 1
                self.positions[dataset][options.index(targets) if targets in options else -1] += 1

    def add_packed(self, name: str, table: pa.Table, row_tokens: int) -> None:
        """One train/*.parquet shard: rows, non-padding tokens and packing efficiency (as the compiler defines it),
        and whether padding holds the manifest's pad_id (``table``: the segment-id and token columns)."""
        tokens = 0
        fill = {}
        for column in table.column_names:
            if column.endswith("_segment_ids"):
                flat = pc.list_flatten(table[column])
                nonpad = int(pc.sum(pc.not_equal(flat, 0)).as_py() or 0)
                tokens += nonpad
                stem = column.removesuffix("_segment_ids")
                fill[stem] = nonpad / len(flat) if len(flat) else 0.0
                values = table.column(PACKED_TOKENS[stem]) if PACKED_TOKENS[stem] in table.column_names else None
                if values is not None and "pad_id" in self.manifest:
                    wrong = pc.and_(pc.equal(flat, 0), pc.not_equal(pc.list_flatten(values), self.manifest["pad_id"]))
                    self.bad_padding += int(pc.sum(wrong).as_py() or 0)
        rows = table.num_rows
        self.shards.append({"file": name, "rows": rows, "tokens": tokens,
                            "packing_efficiency": tokens / (rows * row_tokens) if rows else 0.0, "fill": fill})

    def add_eval(self, dataset: str, table: pa.Table, info: Mapping[str, Any]) -> None:
        """One eval/<dataset>.parquet file."""
        keys: dict[str, set[str]] = defaultdict(set)
        for key, split in zip(table["example_key"].to_pylist(), table["split"].to_pylist()):
            keys[split].add(key)
        per_split = {s: len(k) for s, k in sorted(keys.items())}
        labels: Counter[str] = Counter()
        positions: Counter[int] = Counter()
        for target, options, answer in zip(table["targets"].to_pylist(), table["options"].to_pylist(),
                                           table["answer_index"].to_pylist()):
            if options:
                labels[target] += 1
                positions[answer] += 1
        self.eval[dataset] = {
            "file": info.get("file"), "kind": info.get("kind"), "metric": info.get("metric"), "rows": table.num_rows,
            "examples": per_split, "templates": len(set(table["template"].to_pylist())),
            "turned_rows": int(pc.sum(table["turned"]).as_py() or 0),
            "options": option_balance(labels, positions) if labels else None,
        }

    def result(self) -> dict[str, Any]:
        """The split's statistics (see docs/audit.md, ``splits.<split>``)."""
        m = self.manifest
        table = pa.concat_tables(self.tables) if self.tables else pa.table(
            {c: pa.array([], pa.string()) for c in SMALL_COLUMNS})
        cols = {c: table[c].to_numpy(zero_copy_only=False) for c in SMALL_COLUMNS}
        if "format" in table.column_names:
            cols["format"] = table["format"].to_numpy(zero_copy_only=False)
        total = len(cols["dataset"])
        lengths = m.get("lengths", {})
        in_edges = length_edges(int(lengths.get("inputs", 1)))
        out_edges = length_edges(int(lengths.get("targets", 1)))
        planned_rates: dict[str, float] = m.get("planned_rates", {})
        planned: dict[str, int] = m.get("planned_examples", {})  # the compile's own allocation
        datasets = {}
        names = sorted(set(planned_rates) | set(cols["dataset"].tolist()))
        for d in names:
            datasets[d] = self._dataset(d, cols, planned.get(d, 0), planned_rates.get(d, 0.0), total)
        clusters: dict[str, dict[str, Any]] = {}
        for d, info in datasets.items():
            c = clusters.setdefault(info["cluster"], {"planned": 0, "realized": 0, "tokens": 0, "datasets": 0,
                                                      "input_truncated": 0, "target_truncated": 0})
            c["datasets"] += 1
            for key in ("planned", "realized", "tokens", "input_truncated", "target_truncated"):
                c[key] += info[key]
        for c in clusters.values():
            c["planned_share"] = c["planned"] / total if total else 0.0
            c["realized_share"] = c["realized"] / total if total else 0.0
        rows = sum(s["rows"] for s in self.shards)
        tokens_packed = sum(s["tokens"] for s in self.shards)
        seq = sequence_length(m)
        tokens = int(cols["input_tokens"].astype(np.int64).sum() + cols["target_tokens"].astype(np.int64).sum())
        summary = {"examples": total, "rows": rows, "tokens": tokens,
                   "packing_efficiency": tokens_packed / (rows * seq) if rows else 0.0,
                   "input_truncated": int(cols["input_truncated"].astype(bool).sum()),
                   "target_truncated": int(cols["target_truncated"].astype(bool).sum()),
                   "turned": int(cols["turned"].astype(bool).sum())}
        recorded = m.get("summary", {})
        mismatches = [f"{k}: data {summary[k]!r}, manifest {recorded[k]!r}" for k in summary
                      if k in recorded and not _close(summary[k], recorded[k])]
        formats = _format_counts(cols["format"]) if "format" in cols else None
        recorded_formats = m.get("counts", {}).get("formats")
        if (formats is not None or recorded_formats is not None) and \
                {f: v["examples"] for f, v in (formats or {}).items()} != (recorded_formats or {}):
            mismatches.append(f"formats: data {formats and {f: v['examples'] for f, v in formats.items()}!r}, "
                              f"manifest {recorded_formats!r}")
        if self.bad_padding:
            mismatches.append(f"padding: {self.bad_padding} positions hold an id other than the manifest's pad_id "
                              f"{m.get('pad_id')}")
        return {
            "removed_clusters": list(m.get("removed_clusters", [])), "sequence_length": seq,
            "summary": summary, "manifest_mismatches": mismatches, "formats": formats,
            "lengths": {"input_tokens": distribution(cols["input_tokens"].astype(np.int64), in_edges),
                        "target_tokens": distribution(cols["target_tokens"].astype(np.int64), out_edges)},
            "clusters": dict(sorted(clusters.items())), "datasets": datasets,
            "shards": sorted(self.shards, key=lambda s: s["file"]),
            "eval": dict(sorted(self.eval.items())),
        }

    def _dataset(self, d: str, cols: Mapping[str, np.ndarray], planned: int, rate: float, total: int
                 ) -> dict[str, Any]:
        mask = cols["dataset"] == d
        n = int(mask.sum())
        inp, tgt = cols["input_tokens"][mask].astype(np.int64), cols["target_tokens"][mask].astype(np.int64)
        turned = cols["turned"][mask].astype(bool)
        cut_targets = cols["target_truncated"][mask].astype(bool)
        keys = cols["example_key"][mask]
        templates: dict[str, dict[str, Any]] = {}
        for t, is_turned in zip(cols["template"][mask].tolist(), turned.tolist()):
            entry = templates.setdefault(str(t), {"examples": 0, "turned": is_turned})
            entry["examples"] += 1
        templates = dict(sorted(templates.items(), key=lambda kv: int(kv[0])))
        expected = n / len(templates) if templates else 0.0
        for entry in templates.values():
            entry["share"] = entry["examples"] / n
            entry["expected"] = round(expected, 3)
        labels = self.labels.get(d)
        formats = _format_counts(cols["format"][mask]) if "format" in cols else None
        return {
            "cluster": self.clusters.get(d, _first(cols["cluster"][mask]) or "?"),
            "available": self.manifest.get("train_examples_available", {}).get(d),
            "planned": planned, "realized": n, "planned_rate": rate, "realized_rate": n / total if total else 0.0,
            "distinct_examples": len(set(keys.tolist())),
            "repeated_uses": int((cols["variant"][mask].astype(np.int64) > 0).sum()),
            "tokens": int(inp.sum() + tgt.sum()),
            "input_tokens": distribution(inp), "target_tokens": distribution(tgt),
            "input_truncated": int(cols["input_truncated"][mask].astype(bool).sum()),
            "target_truncated": int(cut_targets.sum()),
            "truncated_targets": sorted(set(keys[cut_targets].tolist()))[:MAX_LISTED],
            "turned": int(turned.sum()), "turned_share": float(turned.mean()) if n else 0.0,
            "templates": templates,
            "options": option_balance(labels, self.positions[d]) if labels else None,
            "formats": formats,
        }


def _format_counts(values: np.ndarray) -> dict[str, dict[str, Any]]:
    """Uses and share of each prompt format among ``values`` (the 'format' column)."""
    names, counts = np.unique(values.astype(str), return_counts=True)
    total = int(counts.sum())
    return {str(n): {"examples": int(c), "share": round(int(c) / total, 6)} for n, c in zip(names, counts)}


def sequence_length(m: Mapping[str, Any]) -> int:
    """Tokens one packed row holds, as the compiler counts them for packing efficiency."""
    lengths = m.get("lengths", {})
    inputs, targets = int(lengths.get("inputs", 0)), int(lengths.get("targets", 0))
    return inputs + targets if m.get("layout", "decoder_only") == "decoder_only" else max(inputs, targets)


def _close(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    return bool(a == b)


def _first(values: Sequence[Any]) -> Any:
    return values[0] if len(values) else None
