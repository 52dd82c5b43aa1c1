"""Audit of instruction rows that were never compiled: JSONL, Parquet or CSV files, any columns.

The rows go through the same lint as a compiled output's (the file is one "source", ``file``), plus
near-duplicates (MinHash, ``near_duplicates.py``) and n-gram contamination against eval sets: those of a
compiled output (``--against DIR``) or, by default, every validation and test split of the bundled
collection rendered with all its templates. Files are read once, in batches; what stays in memory is
the lint's per-row hashes, the MinHash signatures and the eval n-grams.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from flanpipe.audit.contamination import Contamination, EvalSet, pair_texts, text_words
from flanpipe.audit.lint import Lint, example_row
from flanpipe.audit.near_duplicates import NearDuplicates, NearSettings
from flanpipe.audit.stats import distribution, length_edges, option_balance
from flanpipe.collection import load_collection
from flanpipe.errors import AuditError, CompileError, SourceError
from flanpipe.files_source import MISSING, file_rows, format_of, glob_files, lookup
from flanpipe.manifest import SplitManifest, TopManifest
from flanpipe.manifest import load as load_manifest
from flanpipe.paths import TEMPLATES_DIR
from flanpipe.render import EVAL_SCHEMA, add_eval_row
from flanpipe.sources import read_samples
from flanpipe.templates import DEFAULT_OPTIONS_FORMAT

if TYPE_CHECKING:
    from flanpipe.audit import AuditSettings

SOURCE = "file"
BATCH_ROWS = 4096
ROW_SCHEMA = pa.schema([
    ("dataset", pa.string()), ("example_key", pa.string()), ("template", pa.int32()), ("turned", pa.bool_()),
    ("variant", pa.int32()), ("inputs", pa.string()), ("targets", pa.string()), ("options", pa.list_(pa.string())),
])


@dataclass(frozen=True)
class Columns:
    """Which fields of a row hold what (a field path may be nested: ``a/b``)."""

    inputs: str
    targets: str
    options: str | None = None
    dataset: str | None = None
    template: str | None = None
    key: str | None = None
    format: str | None = None


@dataclass(frozen=True)
class Row:
    """Where a row came from: its file, line and number in the whole audit (from 0)."""

    url: str
    line: int
    number: int


def files_of(pattern: str) -> list[str]:
    """The files a path or glob names; AuditError when it names none."""
    try:
        names = glob_files(pattern)
    except (OSError, ValueError) as e:
        raise AuditError(f"{pattern}: cannot list files ({e})") from None
    if not names:
        raise AuditError(f"{pattern}: no such file (expected a JSONL, Parquet or CSV file or a glob of them, or a "
                         f"directory written by `flanpipe compile`)")
    return names


def read_rows(files: list[str], columns: Columns, batch_rows: int = BATCH_ROWS
              ) -> Iterator[tuple[pa.Table, list[Row]]]:
    """Batches of rows in the audit's row schema, with where each came from.

    Raises:
      AuditError: an unknown format, a missing column or a value that is not text (naming file:line).
    """
    dataset_default = PurePosixPath(files[0]).stem if len(files) == 1 else _common_stem(files)
    templates: dict[str, int] = {}
    batch: dict[str, list[Any]] = {name: [] for name in ROW_SCHEMA.names}
    where: list[Row] = []
    number = 0
    for url in files:
        fmt = columns.format or format_of(url)
        if fmt is None:
            raise AuditError(f"{url}: cannot tell the format from its extension; pass --format jsonl|parquet|csv")
        name = PurePosixPath(url).name
        try:
            for line, record in file_rows(url, fmt):
                at = f"{url}:{line}"
                batch["inputs"].append(_text(record, columns.inputs, "--inputs", at))
                batch["targets"].append(_text(record, columns.targets, "--targets", at))
                batch["options"].append(_options(record, columns.options, at))
                batch["dataset"].append(_text(record, columns.dataset, "--dataset", at) if columns.dataset
                                        else dataset_default)
                batch["example_key"].append(_text(record, columns.key, "--key", at) if columns.key
                                            else f"{name}:{line}")
                label = str(_value(record, columns.template, "--template", at)) if columns.template else ""
                batch["template"].append(templates.setdefault(label, len(templates)))
                batch["turned"].append(False)
                batch["variant"].append(0)
                where.append(Row(url, line, number))
                number += 1
                if len(where) == batch_rows:
                    yield pa.table(batch, schema=ROW_SCHEMA), where
                    batch, where = {k: [] for k in ROW_SCHEMA.names}, []
        except SourceError as e:
            raise AuditError(str(e)) from None
        except (OSError, ValueError) as e:
            raise AuditError(f"{url}: cannot read it as {fmt} ({e})") from None
    if where:
        yield pa.table(batch, schema=ROW_SCHEMA), where


def _common_stem(files: list[str]) -> str:
    stems = [PurePosixPath(f).stem for f in files]
    prefix = stems[0]
    for s in stems[1:]:
        while not s.startswith(prefix):
            prefix = prefix[:-1]
    return prefix.rstrip("-_.") or "rows"


def _value(record: dict[str, Any], path: str, flag: str, at: str) -> Any:
    value = lookup(record, path)
    if value is MISSING:
        have = ", ".join(sorted(record)) or "(none)"
        raise AuditError(f"{at}: {flag} {path}: no such field (the row has: {have})")
    return value


def _text(record: dict[str, Any], path: str, flag: str, at: str) -> str:
    value = _value(record, path, flag, at)
    if value is None:
        return ""  # an empty text: the lint's `empty` rule reports it
    if not isinstance(value, str):
        raise AuditError(f"{at}: {flag} {path}: expected text, got {type(value).__name__} {str(value)[:40]!r}")
    return value


def _options(record: dict[str, Any], path: str | None, at: str) -> list[str] | None:
    if path is None:
        return None
    value = _value(record, path, "--options", at)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise AuditError(f"{at}: --options {path}: expected a list of texts, got {str(value)[:60]!r}")
    return value


# ------------------------------------------------------------------ eval sets to compare with
def compiled_eval_sets(out: Path) -> list[tuple[str, pa.Table]]:
    """(dataset, eval table) of every eval set of a compiled output, each once."""
    top = out / "manifest.json"
    if not top.exists():
        raise AuditError(f"--against {out}: not a directory written by `flanpipe compile` (no manifest.json)")
    manifest = load_manifest(top, TopManifest).model_dump(mode="json")
    sets: dict[str, pa.Table] = {}
    for split in manifest.get("splits", []):
        m = load_manifest(out / split / "manifest.json", SplitManifest).model_dump(mode="json")
        for dataset, info in sorted(m.get("eval", {}).items()):
            if dataset not in sets:
                sets[dataset] = pq.read_table(out / split / info["file"])
    return sorted(sets.items())


def bundled_eval_sets(templates: Path = TEMPLATES_DIR) -> list[tuple[str, pa.Table]]:
    """(dataset, eval table) of every validation and test split of a collection's samples, all templates."""
    collection = load_collection(templates)
    samples = collection.root / "samples"
    out = []
    for name in sorted(collection.datasets):
        compiled = collection.compiled(name)
        rows: dict[str, list[Any]] = {c: [] for c in EVAL_SCHEMA.names}
        for split in ("validation", "test"):
            if split not in compiled.spec.source.splits or not (samples / name / f"{split}.jsonl").exists():
                continue
            for key, features in read_samples(compiled.spec, split, samples):
                values = compiled.fields_of(features, plain=True, key=key)
                if values is None:
                    continue
                for t in range(len(compiled.templates)):
                    add_eval_row(rows, name, split, key, compiled.render(values, t, key=key))
        if rows["dataset"]:
            out.append((name, pa.table(rows, schema=EVAL_SCHEMA)))
    return out


# ------------------------------------------------------------------ the audit
@dataclass
class _DatasetStats:
    rows: int = 0
    keys: set[int] = field(default_factory=set)
    input_chars: list[np.ndarray] = field(default_factory=list)
    target_chars: list[np.ndarray] = field(default_factory=list)
    labels: Counter[str] = field(default_factory=Counter)
    positions: Counter[int] = field(default_factory=Counter)
    templates: Counter[int] = field(default_factory=Counter)


def scan_files(pattern: str, columns: Columns, settings: AuditSettings, *, against: Path | None = None,
               templates: Path = TEMPLATES_DIR, near: NearSettings = NearSettings(),
               progress: Callable[[str], None] = lambda msg: None) -> dict[str, Any]:
    """Read the rows of the files ``pattern`` names once; returns the audit document (docs/audit.md, "Files")
    with its findings unsorted and without severities, rule table or status (``audit_files`` adds them).

    Raises:
      AuditError: no file, an unreadable row, or an ``--against`` directory that is not a compiled output.
    """
    started = time.perf_counter()
    files = files_of(pattern)
    progress(f"eval sets: {'those of ' + str(against) if against else 'the bundled collection (validation + test)'}")
    try:
        eval_tables = compiled_eval_sets(against) if against is not None else bundled_eval_sets(templates)
    except AuditError:
        raise
    except CompileError as e:
        raise AuditError(f"{'--against ' + str(against) if against else 'bundled eval sets'}: {e}") from None
    eval_sets = [EvalSet.build(d, t, settings.ngram, settings.boilerplate_share) for d, t in eval_tables]
    scan = Contamination(eval_sets, settings.ngram, batch_rows=settings.batch_rows)
    lint = Lint(DEFAULT_OPTIONS_FORMAT, {}, settings.lint)
    dupes = NearDuplicates(near)
    stats: dict[str, _DatasetStats] = defaultdict(_DatasetStats)
    row_dataset: list[np.ndarray] = []
    names: dict[str, int] = {}
    per_file: Counter[str] = Counter()
    rows = 0
    reading = time.perf_counter()
    for table, where in read_rows(files, columns):
        lint.add_rows(table.to_pylist(), split=SOURCE, source=SOURCE)
        h, doc = text_words(pair_texts(table))  # one word split for the contamination scan and MinHash
        scan.scan_words(table, h, doc)
        dupes.add_pairs(table["inputs"].combine_chunks(), table["targets"].combine_chunks(), h, doc)
        _add_stats(stats, table)
        row_dataset.append(np.array([names.setdefault(d, len(names)) for d in table["dataset"].to_pylist()],
                                    np.int32))
        for w in where:
            per_file[w.url] += 1
        rows += table.num_rows
        progress(f"read {rows:,} rows")
    progress("grouping near-duplicates")
    groups = dupes.groups()
    rows_seconds = time.perf_counter() - reading
    dataset_of = np.concatenate(row_dataset) if row_dataset else np.zeros(0, np.int32)
    by_code = {code: name for name, code in names.items()}
    near_findings = _near_findings(groups, dupes, dataset_of, by_code, files, columns, settings.lint.examples)
    contamination = scan.result(SOURCE)
    findings = lint.findings() + near_findings + _contamination_findings(contamination, scan, settings.ngram)
    seconds = time.perf_counter() - started
    document = {
        "format": "flanpipe-audit/1", "kind": "files", "directory": pattern,
        "pipeline": {"name": None, "hash": None},
        "columns": asdict(columns),
        "files": [{"file": f, "rows": per_file[f]} for f in files],
        "settings": {"ngram": settings.ngram, "errors": sorted(settings.errors),
                     "boilerplate_share": settings.boilerplate_share, "lint": asdict(settings.lint),
                     "near_duplicates": asdict(near),
                     "against": str(against) if against else "bundled collection (validation + test splits)"},
        "datasets": {d: _dataset_result(s, lint, d) for d, s in sorted(stats.items())},
        "near_duplicates": dupes.summary(groups),
        "contamination": {"n": settings.ngram, "eval_sets": contamination,
                          "file_rows": scan.dirty_rows(), "ngrams_scanned": scan.ngrams,
                          "examples_scanned": scan.examples, "seconds": round(scan.seconds, 3)},
        "lint": {"findings": findings},
        # the rows pass (read, lint, contamination scan, MinHash, grouping), without preparing the eval sets
        "seconds": round(seconds, 3), "rows_seconds": round(rows_seconds, 3),
        "rows_per_second": round(rows / rows_seconds) if rows_seconds else None,
    }
    return document


def _add_stats(stats: dict[str, _DatasetStats], table: pa.Table) -> None:
    in_chars = pc.utf8_length(table["inputs"]).to_numpy(zero_copy_only=False).astype(np.int64)
    out_chars = pc.utf8_length(table["targets"]).to_numpy(zero_copy_only=False).astype(np.int64)
    datasets = table["dataset"].to_numpy(zero_copy_only=False)
    for d in np.unique(datasets).tolist():
        s = stats[d]
        mask = datasets == d
        s.rows += int(mask.sum())
        s.input_chars.append(in_chars[mask])
        s.target_chars.append(out_chars[mask])
    for d, key, template, target, options in zip(table["dataset"].to_pylist(), table["example_key"].to_pylist(),
                                                 table["template"].to_pylist(), table["targets"].to_pylist(),
                                                 table["options"].to_pylist()):
        s = stats[d]
        s.keys.add(hash(key))
        s.templates[template] += 1
        if options:
            s.labels[target] += 1
            s.positions[options.index(target) if target in options else -1] += 1


def _dataset_result(s: _DatasetStats, lint: Lint, dataset: str) -> dict[str, Any]:
    inp = np.concatenate(s.input_chars) if s.input_chars else np.zeros(0, np.int64)
    tgt = np.concatenate(s.target_chars) if s.target_chars else np.zeros(0, np.int64)
    return {"rows": s.rows, "distinct_keys": len(s.keys or ()), "templates": len(s.templates or ()),
            "kind": lint.kind_of(dataset),
            "input_chars": distribution(inp, length_edges(int(inp.max()) if len(inp) else 1)),
            "target_chars": distribution(tgt, length_edges(int(tgt.max()) if len(tgt) else 1)),
            "options": option_balance(s.labels, s.positions) if s.labels else None,
            "samples": lint.samples().get(dataset, {}).get(SOURCE, {})}


def _near_findings(groups: list[np.ndarray], dupes: NearDuplicates, dataset_of: np.ndarray, names: dict[int, str],
                   files: list[str], columns: Columns, keep: int) -> list[dict[str, Any]]:
    """One ``near_duplicates`` finding per dataset (of each group's first row), with example pairs re-read."""
    if not groups:
        return []
    by_dataset: dict[str, list[np.ndarray]] = defaultdict(list)
    for g in groups:
        by_dataset[names[int(dataset_of[g[0]])]].append(g)
    wanted: dict[int, None] = {}
    for gs in by_dataset.values():
        for g in gs[:keep]:
            wanted[int(g[0])] = None
            wanted[int(g[1])] = None
    fetched = _fetch(files, columns, set(wanted))
    codes = {name: code for code, name in names.items()}
    out = []
    for dataset, gs in sorted(by_dataset.items()):
        examples = []
        for g in gs[:keep]:
            a, b = int(g[0]), int(g[1])
            for row, note in ((fetched[a], f"first of {len(g)} near-duplicate rows"),
                              (fetched[b], f"near-duplicate of {fetched[a]['example_key']} (estimated similarity "
                                           f"{dupes.similarity(a, b):.2f})")):
                examples.append(example_row(split=SOURCE, source=SOURCE, key=row["example_key"], variant=0,
                                            template=row["template"], inputs=row["inputs"], targets=row["targets"],
                                            note=note))
        in_groups = int(sum(len(g) for g in gs))
        others = sorted({names[int(c)] for g in gs for c in dataset_of[g]} - {dataset})
        out.append({"dataset": dataset, "source": SOURCE, "rule": "near_duplicates", "template": None,
                    "count": in_groups, "rows": int((dataset_of == codes[dataset]).sum()),
                    "message": f"{in_groups} rows in {len(gs)} groups of near-duplicates (estimated Jaccard "
                               f"similarity >= {dupes.settings.threshold} of word {dupes.settings.shingle}-grams, "
                               f"not all identical)" + (f"; groups reach {', '.join(others)}" if others else ""),
                    "examples": examples})
    return out


def _fetch(files: list[str], columns: Columns, numbers: set[int]) -> dict[int, dict[str, Any]]:
    """The rows of the given numbers, read again (only a finding's examples are fetched)."""
    out: dict[int, dict[str, Any]] = {}
    for table, where in read_rows(files, columns):
        hits = [i for i, w in enumerate(where) if w.number in numbers]
        for i in hits:
            out[where[i].number] = {k: table[k][i].as_py() for k in ("example_key", "template", "inputs", "targets")}
        if len(out) == len(numbers):
            break
    return out


def _contamination_findings(contamination: dict[str, Any], scan: Contamination, n: int) -> list[dict[str, Any]]:
    dirty_rows = scan.dirty_rows()
    total_dirty = sum(v["rows"] for v in dirty_rows.values())
    out = []
    for dataset, c in sorted(contamination.items()):
        if c["dirty"]:
            out.append({"rule": "contamination", "dataset": dataset, "source": "eval", "template": None,
                        "count": c["dirty"], "rows": c["examples"],
                        "message": f"{c['dirty']} of {c['examples']} eval examples ({c['dirty_share']:.1%}) share a "
                                   f"{n}-gram with the audited rows ({total_dirty} audited row(s) carry an eval "
                                   f"n-gram; their keys are under contamination.file_rows)",
                        "examples": [{k: m[k] for k in ("split", "source", "example_key", "variant", "template",
                                                        "inputs", "targets", "note")} for m in c["matches"][:3]]})
    return out


def totals(doc: dict[str, Any]) -> dict[str, Any]:
    """The headline figures of a files audit (after its findings have severities)."""
    contamination = list(doc["contamination"]["eval_sets"].values())
    eval_examples = sum(c["examples"] for c in contamination)
    findings = doc["lint"]["findings"]
    return {"files": len(doc["files"]), "rows": sum(f["rows"] for f in doc["files"]), "datasets": len(doc["datasets"]),
            "near_duplicate_rows": doc["near_duplicates"]["rows_in_groups"],
            "eval_sets": len(contamination), "eval_examples": eval_examples,
            "dirty_eval_examples": sum(c["dirty"] for c in contamination),
            "dirty_share": sum(c["dirty"] for c in contamination) / eval_examples if eval_examples else 0.0,
            "dirty_rows": sum(v["rows"] for v in doc["contamination"]["file_rows"].values()),
            "findings": {"error": sum(f["severity"] == "error" for f in findings),
                         "warning": sum(f["severity"] == "warning" for f in findings)}}
