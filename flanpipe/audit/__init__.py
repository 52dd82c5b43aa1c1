"""`flanpipe audit`: statistics, lint, leakage and contamination of a compiled output or of instruction files,
as JSON and an HTML report."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from rich.table import Table

from flanpipe.audit.contamination import RULES as CONTAMINATION_RULES
from flanpipe.audit.contamination import Contamination, EvalSet, held_out_check
from flanpipe.audit.lint import RULES as LINT_RULES
from flanpipe.audit.lint import Lint, LintSettings
from flanpipe.audit.near_duplicates import RULES as NEAR_RULES
from flanpipe.audit.near_duplicates import NearSettings
from flanpipe.audit.rows import Columns, scan_files
from flanpipe.audit.rows import totals as file_totals
from flanpipe.audit.stats import PACKED_TOKENS, SplitStats, sequence_length
from flanpipe.errors import AuditError, OutputError, did_you_mean
from flanpipe.manifest import SplitManifest, TopManifest
from flanpipe.manifest import load as load_manifest
from flanpipe.spec import OptionsFormat
from flanpipe.templates import DEFAULT_OPTIONS_FORMAT

FORMAT = "flanpipe-audit/1"
RULES = {**LINT_RULES, **CONTAMINATION_RULES, **NEAR_RULES}
DEFAULT_ERRORS = frozenset(name for name, rule in RULES.items() if rule.severity == "error")
_EXAMPLE_KEYS = ("split", "source", "example_key", "variant", "template", "inputs", "targets", "note")
_TEXT_COLUMNS = ["dataset", "cluster", "example_key", "variant", "template", "turned", "inputs", "targets"]


@dataclass(frozen=True)
class AuditSettings:
    """What the audit checks and which rules fail it."""

    ngram: int = 13
    errors: frozenset[str] = DEFAULT_ERRORS
    boilerplate_share: float = 0.5
    batch_rows: int = 4096
    lint: LintSettings = field(default_factory=LintSettings)

    @classmethod
    def of(cls, *, errors: Iterable[str] | None = None, allowed: Iterable[str] | None = None, ngram: int = 13
           ) -> AuditSettings:
        """Default error rules plus ``errors`` minus ``allowed``.

        Raises:
          AuditError: an unknown rule name, or an n-gram size below 1.
        """
        errors, allowed = list(errors or ()), list(allowed or ())
        for name in [*errors, *allowed]:
            if name not in RULES:
                raise AuditError(f"unknown audit rule {name!r}{did_you_mean(name, RULES)}; "
                                 f"rules: {', '.join(sorted(RULES))}")
        if ngram < 1:
            raise AuditError(f"--ngram must be at least 1, got {ngram}")
        return cls(ngram=ngram, errors=(DEFAULT_ERRORS | set(errors)) - set(allowed))


def audit_output(out: str | Path, settings: AuditSettings = AuditSettings(),
                 progress: Callable[[str], None] = lambda msg: None) -> dict[str, Any]:
    """Audit a compiled output directory; returns the audit document described in docs/audit.md.

    Every split's examples are read once, shard by shard, feeding the statistics, the lint and the
    contamination scan together; memory holds the small columns, lint's hashes and the eval n-grams.

    Raises:
      OutputError: ``out`` is not a complete compiled output (no or unreadable manifest).
    """
    out = Path(out)
    manifest = _read_manifest(out / "manifest.json", TopManifest)
    fmt = OptionsFormat(**manifest.get("pipeline", {}).get("resolved", {}).get("options_format")
                        or DEFAULT_OPTIONS_FORMAT.model_dump())
    clusters = {d: info["cluster"] for d, info in manifest.get("datasets", {}).items()}
    split_manifests = {s: _read_manifest(out / s / "manifest.json", SplitManifest) for s in manifest.get("splits", [])}
    kinds = {d: info["kind"] for m in split_manifests.values() for d, info in m.get("eval", {}).items()}
    lint = Lint(fmt, kinds, settings.lint)
    splits: dict[str, Any] = {}
    scanned = {"ngrams": 0, "examples": 0, "seconds": 0.0}
    linted_eval: set[str] = set()
    lint_split = _lint_splits(split_manifests)
    for name, m in split_manifests.items():
        progress(f"auditing split {name}")
        base = out / name
        stats = SplitStats(m, fmt, clusters)
        eval_sets = []
        for dataset, info in sorted(m.get("eval", {}).items()):
            table = pq.read_table(base / info["file"])
            stats.add_eval(dataset, table, info)
            eval_sets.append(EvalSet.build(dataset, table, settings.ngram, settings.boilerplate_share))
            if dataset not in linted_eval:  # the same eval set in several splits is linted once
                linted_eval.add(dataset)
                lint.add_rows(table.to_pylist(), split=name, source="eval")
        scan = Contamination(eval_sets, settings.ngram, batch_rows=settings.batch_rows)
        pairs: Counter[tuple[str, str]] = Counter()
        for path in sorted((base / "examples").glob("*.parquet")):
            table = pq.read_table(path)
            stats.add_examples(table)
            for dataset in pc.unique(table["dataset"]).to_pylist():
                lint_split.setdefault(dataset, name)
            mine = pa.array([d for d, s in lint_split.items() if s == name], pa.string())
            text_columns = _TEXT_COLUMNS + (["format"] if "format" in table.column_names else [])
            rows = table.select(text_columns).filter(pc.is_in(table["dataset"], value_set=mine))
            lint.add_rows(rows.to_pylist(), split=name, source="train")
            scan.scan(table)
            for row in table.group_by(["dataset", "cluster"]).aggregate([([], "count_all")]).to_pylist():
                pairs[(row["dataset"], row["cluster"])] += row["count_all"]
        seq = sequence_length(m)
        for path in sorted((base / "train").glob("*.parquet")):
            segments = [c for c in pq.read_schema(path).names if c.endswith("_segment_ids")]
            columns = segments + [PACKED_TOKENS[c.removesuffix("_segment_ids")] for c in segments]
            stats.add_packed(path.relative_to(base).as_posix(), pq.read_table(path, columns=columns), seq)
        split_result = stats.result()
        split_result["leakage"] = held_out_check(m.get("removed_clusters", []), pairs, clusters)
        split_result["contamination"] = scan.result(name)
        splits[name] = split_result
        for key, value in (("ngrams", scan.ngrams), ("examples", scan.examples), ("seconds", scan.seconds)):
            scanned[key] += value
    findings = _judged(lint.findings() + _split_findings(splits, settings.ngram), settings)
    document = {
        "format": FORMAT, "directory": str(out.resolve()),
        "pipeline": {k: manifest.get("pipeline", {}).get(k) for k in ("name", "hash")},
        "settings": {"ngram": settings.ngram, "errors": sorted(settings.errors),
                     "boilerplate_share": settings.boilerplate_share, "lint": asdict(settings.lint),
                     "options_format": fmt.model_dump()},
        "splits": splits,
        "datasets": _datasets(clusters, splits, lint, manifest.get("decontamination")),
        # what the compile's decontaminate dropped (absent without it): compare with the contamination found
        **({"decontamination": manifest["decontamination"]} if manifest.get("decontamination") else {}),
        "lint": {"rules": _rule_table(findings, settings, {k: v for k, v in RULES.items() if k not in NEAR_RULES}),
                 "findings": findings},
        "contamination": {"n": settings.ngram, "ngrams_scanned": scanned["ngrams"],
                          "examples_scanned": scanned["examples"], "seconds": round(scanned["seconds"], 3),
                          "ngrams_per_second": round(scanned["ngrams"] / scanned["seconds"]) if scanned["seconds"]
                          else None},
    }
    document["totals"] = _totals(document)
    document["status"] = _status(findings, settings)
    return document


def audit_files(pattern: str, columns: Columns, settings: AuditSettings = AuditSettings(), *,
                against: Path | None = None, near: NearSettings = NearSettings(),
                progress: Callable[[str], None] = lambda msg: None, **kwargs: Any) -> dict[str, Any]:
    """Audit instruction rows in JSONL/Parquet/CSV files (a path or glob); returns the audit document
    described in docs/audit.md ("Files"). ``kwargs`` go to ``rows.scan_files`` (e.g. ``templates``).

    Raises:
      AuditError: no file, a row without the named columns, or an unusable ``against`` directory.
    """
    document = scan_files(pattern, columns, settings, against=against, near=near, progress=progress, **kwargs)
    findings = _judged(document["lint"]["findings"], settings)
    # a file has no held-out clusters: that rule does not apply
    rules = {name: rule for name, rule in RULES.items() if name not in CONTAMINATION_RULES or name == "contamination"}
    document["lint"] = {"rules": _rule_table(findings, settings, rules), "findings": findings}
    document["totals"] = file_totals(document)
    document["status"] = _status(findings, settings)
    return document


def is_output(target: str | Path) -> bool:
    """Whether ``target`` is a directory written by ``flanpipe compile`` (else it names files to audit)."""
    return Path(target).is_dir()


def run_audit(out: str | Path, settings: AuditSettings, *, html: Path | None = None, json_path: Path | None = None,
              progress: Callable[[str], None] = lambda msg: None, columns: Columns | None = None,
              against: Path | None = None, near: NearSettings = NearSettings()) -> dict[str, Any]:
    """Audit ``out`` (a compiled output directory, or with ``columns`` files of rows) and write the JSON
    document and the HTML report where asked; returns the document."""
    start = time.perf_counter()
    if columns is not None:
        document = audit_files(str(out), columns, settings, against=against, near=near, progress=progress)
    else:
        document = audit_output(out, settings, progress)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(document, indent=1, ensure_ascii=False) + "\n")
    if html is not None:
        # matplotlib is heavy: imported only when a report is asked for, not by every CLI start
        from flanpipe.audit.files_report import render_files_html
        from flanpipe.audit.report import render_html
        progress("rendering the HTML report")
        html.parent.mkdir(parents=True, exist_ok=True)
        render = render_files_html if document.get("kind") == "files" else render_html
        html.write_text(render(document), encoding="utf-8")
    progress(f"audit finished in {time.perf_counter() - start:.1f}s")
    return document


def audit_table(document: dict[str, Any]) -> Table:
    """A terminal summary: one row per rule that fired, then the verdict in the title."""
    status = document["status"]
    verdict = "FAILED" if status["failed"] else "passed"
    table = Table(title=f"audit {verdict}: {document['totals']['findings']['error']} error finding(s), "
                        f"{document['totals']['findings']['warning']} warning finding(s)")
    for col in ("rule", "severity", "findings", "rows", "datasets"):
        table.add_column(col, justify="right" if col in ("findings", "rows") else "left")
    fired = {rule: info for rule, info in document["lint"]["rules"].items() if info["findings"]}
    for rule, info in fired.items():
        table.add_row(rule, info["severity"], str(info["findings"]), str(info["rows"]),
                      ", ".join(info["datasets"][:6]) + (" …" if len(info["datasets"]) > 6 else ""))
    if not fired:
        table.add_row("(no rule fired)", "", "", "", "")
    return table


def _judged(findings: list[dict[str, Any]], settings: AuditSettings) -> list[dict[str, Any]]:
    """Findings with their severity under ``settings``, errors first."""
    for f in findings:
        f["severity"] = "error" if f["rule"] in settings.errors else "warning"
    return sorted(findings, key=lambda f: (f["severity"] != "error", f["rule"], f["dataset"], f["source"],
                                           -1 if f["template"] is None else f["template"]))


def _read_manifest(path: Path, model: type[TopManifest] | type[SplitManifest]) -> dict[str, Any]:
    """A manifest validated by the compiler's own model, as the plain data the audit walks."""
    if not path.exists():
        raise OutputError(f"{path}: missing: not a complete flanpipe output (run `flanpipe compile` first)")
    return load_manifest(path, model).model_dump(mode="json")


def _lint_splits(split_manifests: dict[str, dict[str, Any]]) -> dict[str, str]:
    """The split whose mixture holds the most rows of each dataset: lint reads each dataset there only.

    Every split draws a dataset's examples (and repeats) in the same seeded order (mixing.select), so
    the split with the most rows holds every row any split has; linting it alone sees each row once.
    """
    best: dict[str, tuple[float, str]] = {}
    for name, m in split_manifests.items():
        counts = m.get("counts", {}).get("datasets") or m.get("planned_rates", {})
        for dataset, n in counts.items():
            if dataset not in best or n > best[dataset][0]:
                best[dataset] = (n, name)
    return {d: name for d, (_, name) in best.items()}


def _split_findings(splits: dict[str, Any], n: int) -> list[dict[str, Any]]:
    out = []
    for name, s in splits.items():
        for leak in s["leakage"]["leaked"]:
            out.append({"rule": "held_out_leak", "dataset": leak["dataset"], "source": "train", "template": None,
                        "count": leak["rows"], "rows": s["summary"]["examples"], "split": name,
                        "message": f"split {name}: {leak['rows']} train rows of {leak['dataset']} (cluster "
                                   f"{leak['cluster']}), which is held out of this split", "examples": []})
        for dataset, c in s["contamination"].items():
            if c["dirty"]:
                out.append({"rule": "contamination", "dataset": dataset, "source": "eval", "template": None,
                            "count": c["dirty"], "rows": c["examples"], "split": name,
                            "message": f"split {name}: {c['dirty']} of {c['examples']} eval examples "
                                       f"({c['dirty_share']:.1%}) share a {n}-gram with the train mixture",
                            "examples": [{k: m[k] for k in _EXAMPLE_KEYS} for m in c["matches"][:3]]})
    return out


def _datasets(clusters: dict[str, str], splits: dict[str, Any], lint: Lint,
              decontamination: dict[str, Any] | None = None) -> dict[str, Any]:
    samples = lint.samples()
    names = sorted(set(clusters) | set(samples))
    dropped = (decontamination or {}).get("datasets", {})
    return {d: {"cluster": clusters.get(d), "kind": lint.kind_of(d),
                "trained_in": [s for s, v in splits.items() if v["datasets"].get(d, {}).get("realized")],
                "evaluated_in": [s for s, v in splits.items() if d in v["eval"]],
                "samples": samples.get(d, {}),
                **({"decontaminated": dropped[d]["dropped"]} if d in dropped else {})} for d in names}


def _rule_table(findings: list[dict[str, Any]], settings: AuditSettings, rules: dict[str, Any] | None = None
                ) -> dict[str, Any]:
    table = {}
    for name, rule in sorted((RULES if rules is None else rules).items()):
        mine = [f for f in findings if f["rule"] == name]
        table[name] = {"severity": "error" if name in settings.errors else "warning",
                       "description": rule.description, "findings": len(mine),
                       "rows": sum(f["count"] for f in mine), "datasets": sorted({f["dataset"] for f in mine})}
    return table


def _totals(doc: dict[str, Any]) -> dict[str, Any]:
    summaries = [s["summary"] for s in doc["splits"].values()]
    rows = sum(s["rows"] for s in summaries)
    tokens_packed = sum(sh["tokens"] for s in doc["splits"].values() for sh in s["shards"])
    capacity = sum(sh["rows"] * s["sequence_length"] for s in doc["splits"].values() for sh in s["shards"])
    contamination = [c for s in doc["splits"].values() for c in s["contamination"].values()]
    eval_examples = sum(c["examples"] for c in contamination)
    findings = doc["lint"]["findings"]
    return {
        "splits": len(doc["splits"]), "datasets": len(doc["datasets"]),
        "train_examples": sum(s["examples"] for s in summaries), "rows": rows,
        "tokens": sum(s["tokens"] for s in summaries),
        "packing_efficiency": tokens_packed / capacity if capacity else 0.0,
        "input_truncated": sum(s["input_truncated"] for s in summaries),
        "target_truncated": sum(s["target_truncated"] for s in summaries),
        "eval_sets": len(contamination), "eval_examples": eval_examples,
        "dirty_eval_examples": sum(c["dirty"] for c in contamination),
        "dirty_share": sum(c["dirty"] for c in contamination) / eval_examples if eval_examples else 0.0,
        "findings": {"error": sum(f["severity"] == "error" for f in findings),
                     "warning": sum(f["severity"] == "warning" for f in findings)},
    }


def _status(findings: list[dict[str, Any]], settings: AuditSettings) -> dict[str, Any]:
    fired = sorted({f["rule"] for f in findings if f["severity"] == "error"})
    return {"failed": bool(fired), "error_rules_fired": fired,
            "warning_rules_fired": sorted({f["rule"] for f in findings if f["severity"] == "warning"}),
            "error_rules": sorted(settings.errors)}

