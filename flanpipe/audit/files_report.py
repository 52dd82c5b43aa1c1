"""The HTML report of a files audit (``flanpipe audit FILE --inputs ... --targets ...``), in the report's style."""

from __future__ import annotations

from typing import Any

from flanpipe.audit.report import (
    cards_html,
    dirty_plot,
    esc,
    example_html,
    figure_html,
    histogram_plot,
    lint_section,
    page,
    table,
)


def render_files_html(doc: dict[str, Any]) -> str:
    """The whole report of a files audit; every data string is escaped and nothing is loaded from the network."""
    t, status = doc["totals"], doc["status"]
    cards = [("verdict", "FAILED" if status["failed"] else "passed", "bad" if status["failed"] else "good"),
             ("files", t["files"], ""), ("rows", f"{t['rows']:,}", ""), ("datasets", t["datasets"], ""),
             ("error findings", t["findings"]["error"], "bad" if t["findings"]["error"] else "good"),
             ("warning findings", t["findings"]["warning"], ""),
             ("near-duplicate rows", f"{t['near_duplicate_rows']:,}", "bad" if t["near_duplicate_rows"] else "good"),
             ("rows with an eval n-gram", f"{t['dirty_rows']:,}", "bad" if t["dirty_rows"] else "good"),
             ("dirty eval examples", f"{t['dirty_eval_examples']:,} ({t['dirty_share']:.1%})",
              "bad" if t["dirty_eval_examples"] else "good")]
    body = [f"<h1>flanpipe audit: {esc(doc['directory'])}</h1>",
            f"<div class=\"meta\">{len(doc['files'])} file(s) · inputs {esc(doc['columns']['inputs'])} · targets "
            f"{esc(doc['columns']['targets'])} · {esc(doc['format'])} · {esc(doc['rows_per_second'])} rows/s · error "
            f"rules: {esc(', '.join(status['error_rules']))}</div>",
            cards_html(cards),
            "<nav><a href=\"#rows\">rows</a> · <a href=\"#lint\">lint</a> · <a href=\"#near\">near-duplicates</a> · "
            "<a href=\"#contamination\">contamination</a> · <a href=\"#samples\">samples</a></nav>"]
    body += _rows_section(doc)
    body += lint_section(doc)
    body += _near_section(doc)
    body += _contamination_section(doc)
    body += _samples_section(doc)
    return page(f"flanpipe audit: {doc['directory']}", body)


def _rows_section(doc: dict[str, Any]) -> list[str]:
    datasets = doc["datasets"]
    parts = ["<h2 id=\"rows\">Rows</h2>",
             table(["file", "rows"], [(f["file"], f["rows"]) for f in doc["files"]], numeric=(1,)),
             table(["dataset", "kind", "rows", "distinct keys", "templates", "input chars p50", "input chars p99",
                    "target chars p50", "target chars p99", "majority option share"],
                   [(d, v["kind"], v["rows"], v["distinct_keys"], v["templates"], v["input_chars"]["p50"],
                     v["input_chars"]["p99"], v["target_chars"]["p50"], v["target_chars"]["p99"],
                     v["options"]["majority_share"] if v["options"] else None) for d, v in datasets.items()],
                   numeric=range(2, 10))]
    parts.append(figure_html(histogram_plot("inputs", [(d, v["input_chars"]) for d, v in datasets.items()],
                                            "input characters"), "input lengths per dataset"))
    parts.append(figure_html(histogram_plot("targets", [(d, v["target_chars"]) for d, v in datasets.items()],
                                            "target characters"), "target lengths per dataset"))
    return parts


def _near_section(doc: dict[str, Any]) -> list[str]:
    n = doc["near_duplicates"]
    return ["<h2 id=\"near\">Near-duplicates</h2>",
            f"<p class=\"meta\">MinHash of word {esc(n['shingle_words'])}-grams, {esc(n['perms'])} hash functions in "
            f"{esc(n['bands'])} bands of {esc(n['rows_per_band'])}; rows kept when the estimated Jaccard similarity "
            f"is at least {esc(n['threshold'])}. {esc(n['rows_without_shingles'])} row(s) shorter than a shingle are "
            f"compared exactly only (the <code>duplicates</code> rule). Groups made only of identical rows are the "
            f"<code>duplicates</code> rule's.</p>",
            table(["groups", "rows in groups", "rows"], [(n["groups"], n["rows_in_groups"], n["rows"])],
                  numeric=(0, 1, 2))]


def _contamination_section(doc: dict[str, Any]) -> list[str]:
    c = doc["contamination"]
    sets = c["eval_sets"]
    parts = ["<h2 id=\"contamination\">Contamination</h2>",
             f"<p class=\"meta\">{esc(c['n'])}-gram overlap (lowercased words) between the audited rows and "
             f"{esc(doc['settings']['against'])}; template text shared by most examples of an eval set is not "
             f"counted. Dirty eval ids are in the JSON (<code>contamination.eval_sets.*.dirty_ids</code>), the "
             f"audited rows that carry an eval n-gram under <code>contamination.file_rows</code>.</p>"]
    dirty = {d: v for d, v in sets.items() if v["dirty"]}
    if dirty:
        parts.append(figure_html(dirty_plot(list(dirty), [v["dirty_share"] for v in dirty.values()],
                                            f"dirty share ({c['n']}-gram overlap with the audited rows)"),
                                 "eval sets with examples found in the audited rows"))
    parts.append(table(["eval set", "examples", "dirty", "dirty share", "first matching n-gram"],
                       [(d, v["examples"], v["dirty"], v["dirty_share"], v["matches"][0]["ngram"] if v["matches"]
                         else "") for d, v in sets.items()], numeric=(1, 2, 3)))
    if c["file_rows"]:
        parts.append(table(["audited dataset", "rows with an eval n-gram", "keys (first 100)"],
                           [(d, v["rows"], ", ".join(v["keys"])) for d, v in c["file_rows"].items()], numeric=(1,)))
    return parts


def _samples_section(doc: dict[str, Any]) -> list[str]:
    parts = ["<h2 id=\"samples\">Samples</h2>"]
    for d, info in doc["datasets"].items():
        parts.append(f"<details><summary>{esc(d)}: the first row of each template</summary>"
                     + "".join(example_html(e) for e in info["samples"].values()) + "</details>")
    return parts
