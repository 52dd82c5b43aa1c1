"""One self-contained HTML page from an audit document: cards, matplotlib SVG plots, sortable tables, findings."""

from __future__ import annotations

import functools
import html
import io
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import matplotlib
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

PLANNED, REALIZED, TURNED, ACCENT = "#c7c7c7", "#1f77b4", "#ff7f0e", "#d62728"
_RC = {"svg.fonttype": "none", "text.parse_math": False, "font.size": 9, "axes.spines.top": False,
       "axes.spines.right": False}

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1200px;padding:1rem 2rem;
color:#222;line-height:1.4}
h1{margin-bottom:.2rem}h2{border-bottom:2px solid #ddd;padding-bottom:.2rem;margin-top:2.2rem}
.meta{color:#666;font-size:.9rem}.cards{display:flex;flex-wrap:wrap;gap:.7rem;margin:1rem 0}
.card{border:1px solid #ddd;border-radius:8px;padding:.6rem .9rem;min-width:9rem;background:#fafafa}
.card .v{font-size:1.4rem;font-weight:600}.card .k{font-size:.8rem;color:#666}
.card.bad{border-color:#d62728;background:#fff3f3}.card.good{border-color:#2ca02c;background:#f3fff3}
table{border-collapse:collapse;margin:.6rem 0;font-size:.85rem;display:block;overflow-x:auto;max-width:100%}
summary.h3{font-size:1.15rem;font-weight:600;margin:1rem 0 .4rem}th,td{border:1px solid #ddd;padding:.25rem .5rem;
text-align:left;vertical-align:top}td.n{text-align:right;font-variant-numeric:tabular-nums}
table.sortable th{cursor:pointer;background:#f0f0f0;user-select:none}table.sortable th:hover{background:#e4e4e4}
th[aria-sort=ascending]::after{content:" \\25B2"}th[aria-sort=descending]::after{content:" \\25BC"}
.error{color:#b00020;font-weight:600}.warning{color:#a05a00}.ok{color:#2ca02c;font-weight:600}
pre{white-space:pre-wrap;word-break:break-word;background:#f6f8fa;border:1px solid #e1e4e8;border-radius:4px;
padding:.4rem;margin:.2rem 0;font-size:.8rem;max-height:16rem;overflow:auto}
details{margin:.4rem 0}summary{cursor:pointer}figure{margin:.8rem 0}figure svg{max-width:100%;height:auto}
figcaption{font-size:.85rem;color:#555}.ex{border-left:3px solid #ddd;padding-left:.6rem;margin:.5rem 0}
"""

# Sorts any table.sortable by a clicked header (numbers by data-v or text); '#selftest' exercises every
# table and records the result on <body> so a headless browser test can read it from the DOM.
SCRIPT = """
(function(){
var errors=[];window.addEventListener('error',function(e){errors.push(String(e.message));});
function key(td){var v=td.getAttribute('data-v');if(v===null)v=td.textContent.trim();var n=Number(v);
return (v!==''&&!isNaN(n))?[0,n]:[1,v.toLowerCase()];}
function sortBy(th){var table=th.closest('table'),body=table.tBodies[0],
i=Array.prototype.indexOf.call(th.parentNode.children,th),asc=th.getAttribute('aria-sort')!=='ascending';
var rows=Array.prototype.slice.call(body.rows);rows.sort(function(a,b){var x=key(a.cells[i]),y=key(b.cells[i]);
var c=x[0]-y[0]||(x[1]<y[1]?-1:x[1]>y[1]?1:0);return asc?c:-c;});
rows.forEach(function(r){body.appendChild(r);});
Array.prototype.forEach.call(th.parentNode.children,function(h){h.removeAttribute('aria-sort');});
th.setAttribute('aria-sort',asc?'ascending':'descending');}
document.querySelectorAll('table.sortable th').forEach(function(th){
th.addEventListener('click',function(){sortBy(th);});});
if(location.hash==='#selftest'){var sorted=0;
document.querySelectorAll('details').forEach(function(d){d.open=true;});
document.querySelectorAll('table.sortable th').forEach(function(th){sortBy(th);sortBy(th);sorted++;});
var svgs=document.querySelectorAll('figure svg'),drawn=0;
svgs.forEach(function(s){var r=s.getBoundingClientRect();if(r.width>50&&r.height>50)drawn++;});
document.body.setAttribute('data-selftest',JSON.stringify({sorted:sorted,svgs:svgs.length,drawn:drawn,
errors:errors}));}
})();
"""


_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def esc(value: Any) -> str:
    """HTML-escape any value as text (quotes too, so it is safe inside attributes).

    Control characters, which HTML cannot show, become visible ``⟨U+0007⟩`` marks.
    """
    text = _CONTROL.sub(lambda m: f"\u27e8U+{ord(m.group()):04X}\u27e9", str(value))
    return html.escape(text, quote=True)


def _styled(plot: Callable[..., str]) -> Callable[..., str]:
    """Run a plot function under the report's matplotlib style (rcParams apply when artists are made)."""
    @functools.wraps(plot)
    def wrapper(*args: Any, **kwargs: Any) -> str:
        with matplotlib.rc_context(_RC):
            return plot(*args, **kwargs)
    return wrapper


def svg(fig: Figure, name: str) -> str:
    """A matplotlib figure as inline <svg> markup, its ids prefixed with ``name`` to stay unique in the page."""
    buf = io.StringIO()
    with matplotlib.rc_context({"svg.hashsalt": name}):
        fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    text = buf.getvalue()
    text = text[text.index("<svg"):]
    text = re.sub(r'\bid="', f'id="{name}-', text)
    text = text.replace("url(#", f"url(#{name}-").replace('href="#', f'href="#{name}-')
    return text


def _figure(width: float, height: float, ncols: int = 1) -> tuple[Figure, Any]:
    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, fig.subplots(1, ncols, squeeze=False)[0]


def _barh_pair(ax: Any, labels: Sequence[str], planned: Sequence[float], realized: Sequence[float], title: str
               ) -> None:
    y = range(len(labels))
    ax.barh([i + 0.2 for i in y], planned, height=0.4, color=PLANNED, label="planned")
    ax.barh([i - 0.2 for i in y], realized, height=0.4, color=REALIZED, label="realized")
    ax.set_yticks(list(y), labels)
    ax.invert_yaxis()
    ax.set_title(title)
    ax.set_xlabel("examples")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)


@_styled
def composition_plot(name: str, split: dict[str, Any]) -> str:
    """Mixture composition of a split by cluster (top) and by dataset (below), planned vs realized."""
    clusters = split["clusters"]
    datasets = dict(sorted(split["datasets"].items(), key=lambda kv: (kv[1]["cluster"], kv[0])))
    fig = Figure(figsize=(10, 0.22 * (len(clusters) + len(datasets)) + 2.4), layout="constrained")
    top, bottom = fig.subplots(2, 1, height_ratios=[len(clusters) + 1.5, len(datasets) + 1.5])
    _barh_pair(top, list(clusters), [c["planned"] for c in clusters.values()],
               [c["realized"] for c in clusters.values()], "by cluster")
    _barh_pair(bottom, [f"{d} ({v['cluster']})" for d, v in datasets.items()],
               [d["planned"] for d in datasets.values()], [d["realized"] for d in datasets.values()], "by dataset")
    return svg(fig, f"composition-{_slug(name)}")


@_styled
def lengths_plot(name: str, split: dict[str, Any]) -> str:
    """Histograms of input and target token lengths (after truncation, EOS included)."""
    fig, axes = _figure(11, 2.6, 2)
    for ax, part in zip(axes, ("input_tokens", "target_tokens")):
        hist = split["lengths"][part].get("histogram")
        if hist and hist["counts"]:
            ax.stairs(hist["counts"], hist["edges"], fill=True, color=REALIZED)
        ax.set_title(part.replace("_", " "))
        ax.set_xlabel("tokens")
        ax.set_ylabel("examples")
    return svg(fig, f"lengths-{_slug(name)}")


@_styled
def packing_plot(doc: dict[str, Any]) -> str:
    """Packing efficiency of every shard, one line per split."""
    fig, (ax,) = _figure(11, 2.8)
    for i, (name, s) in enumerate(doc["splits"].items()):
        values = [sh["packing_efficiency"] for sh in s["shards"]]
        ax.plot(range(len(values)), values, marker="o", label=name, color=f"C{i % 10}")
    ax.set_ylim(0, 1.02)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("shard")
    ax.set_ylabel("non-padding share")
    ax.legend(loc="lower right", frameon=False, fontsize=8, ncols=2)
    return svg(fig, "packing")


@_styled
def template_plot(doc: dict[str, Any]) -> str:
    """Template usage per dataset (all splits): each bar split into its templates' shares; turned ones orange."""
    usage: dict[str, Counter[int]] = {}
    turned: dict[str, set[int]] = {}
    for s in doc["splits"].values():
        for d, info in s["datasets"].items():
            for t, entry in info["templates"].items():
                usage.setdefault(d, Counter())[int(t)] += entry["examples"]
                if entry["turned"]:
                    turned.setdefault(d, set()).add(int(t))
    names = sorted(usage)
    fig, (ax,) = _figure(11, max(2.0, 0.28 * len(names) + 1.0))
    for row, d in enumerate(names):
        total, left = sum(usage[d].values()), 0.0
        for t in sorted(usage[d]):
            share = usage[d][t] / total
            is_turned = t in turned.get(d, set())
            ax.barh(row, share, left=left, color=TURNED if is_turned else (REALIZED if t % 2 else "#6baed6"),
                    edgecolor="white", linewidth=0.6)
            if share > 0.045:
                ax.text(left + share / 2, row, str(t), ha="center", va="center", fontsize=7, color="white")
            left += share
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of the dataset's examples (template index in the bar; orange = turned)")
    return svg(fig, "templates")


def contamination_plot(doc: dict[str, Any]) -> str:
    """Share of each held-out eval set's examples that share an n-gram with the split's train mixture."""
    labels, shares = [], []
    for name, s in doc["splits"].items():
        for d, c in s["contamination"].items():
            labels.append(f"{d} ({name})")
            shares.append(c["dirty_share"])
    return dirty_plot(labels, shares, f"dirty share ({doc['contamination']['n']}-gram overlap with the train mixture)")


@_styled
def dirty_plot(labels: Sequence[str], shares: Sequence[float], xlabel: str) -> str:
    """Horizontal bars of dirty shares, red where above 0."""
    fig, (ax,) = _figure(11, max(1.6, 0.28 * len(labels) + 1.0))
    ax.barh(range(len(labels)), shares, color=[ACCENT if v else REALIZED for v in shares])
    ax.set_yticks(range(len(labels)), labels)
    ax.invert_yaxis()
    ax.set_xlim(0, max([0.05, *shares]) * 1.1)
    ax.set_xlabel(xlabel)
    return svg(fig, "contamination")


@_styled
def histogram_plot(name: str, histograms: Sequence[tuple[str, dict[str, Any]]], xlabel: str) -> str:
    """One step histogram per (label, distribution with a histogram), on shared axes."""
    fig, (ax,) = _figure(10, 3.2)
    for label, dist in histograms:
        h = dist.get("histogram")
        if h:
            ax.stairs(h["counts"], h["edges"], label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("rows")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    if histograms:
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    return svg(fig, name)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], *, numeric: Iterable[int] = ()) -> str:
    """A sortable table; cells are escaped, numeric columns sort by value (floats shown with 3 digits)."""
    nums = set(numeric)
    out = ["<table class=\"sortable\"><thead><tr>", *(f"<th>{esc(h)}</th>" for h in headers), "</tr></thead><tbody>"]
    for row in rows:
        out.append("<tr>")
        for i, cell in enumerate(row):
            if i in nums and isinstance(cell, (int, float)) and not isinstance(cell, bool):
                shown = f"{cell:,}" if isinstance(cell, int) else (f"{cell:,.0f}" if abs(cell) >= 1000 else
                                                                     f"{cell:.3g}")
                out.append(f"<td class=\"n\" data-v=\"{cell}\">{esc(shown)}</td>")
            else:
                out.append(f"<td>{esc('' if cell is None else cell)}</td>")
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def figure_html(markup: str, caption: str) -> str:
    return f"<figure>{markup}<figcaption>{esc(caption)}</figcaption></figure>"


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", name)


def cards_html(cards: Sequence[tuple[str, Any, str]]) -> str:
    """A row of headline cards: (label, value, "bad" | "good" | "")."""
    return "<div class=\"cards\">" + "".join(
        f"<div class=\"card {cls}\"><div class=\"v\">{esc(v)}</div><div class=\"k\">{esc(k)}</div></div>"
        for k, v, cls in cards) + "</div>"


def _cards(doc: dict[str, Any]) -> str:
    t, status = doc["totals"], doc["status"]
    cards = [("verdict", "FAILED" if status["failed"] else "passed", "bad" if status["failed"] else "good"),
             ("splits", t["splits"], ""), ("datasets", t["datasets"], ""),
             ("train examples", f"{t['train_examples']:,}", ""), ("packed rows", f"{t['rows']:,}", ""),
             ("tokens", f"{t['tokens']:,}", ""), ("packing efficiency", f"{t['packing_efficiency']:.1%}", ""),
             ("inputs truncated", f"{t['input_truncated'] / max(t['train_examples'], 1):.1%}", ""),
             ("targets cut", f"{t['target_truncated']:,}", "bad" if t["target_truncated"] else ""),
             ("error findings", t["findings"]["error"], "bad" if t["findings"]["error"] else "good"),
             ("warning findings", t["findings"]["warning"], ""),
             ("dirty eval examples", f"{t['dirty_eval_examples']:,} ({t['dirty_share']:.1%})",
              "bad" if t["dirty_eval_examples"] else "good")]
    return cards_html(cards)


def example_html(e: dict[str, Any]) -> str:
    head = (f"{e.get('source', '')} {e.get('split', '')} · {e.get('example_key', '')} · template "
            f"{e.get('template', '')}" + (f" · variant {e['variant']}" if e.get("variant") else ""))
    note = f" · <b>{esc(e['note'])}</b>" if e.get("note") else ""
    return (f"<div class=\"ex\"><div class=\"meta\">{esc(head)}{note}</div><div>input</div><pre>{esc(e['inputs'])}"
            f"</pre><div>target</div><pre>{esc(e['targets'])}</pre></div>")


def _splits_section(doc: dict[str, Any]) -> list[str]:
    parts = ["<h2 id=\"mixtures\">Mixtures</h2>"]
    rows = []
    for name, s in doc["splits"].items():
        m = s["summary"]
        n = max(m["examples"], 1)
        dirty = sum(c["dirty"] for c in s["contamination"].values())
        rows.append((name, ", ".join(s["removed_clusters"]), m["examples"], m["rows"], m["tokens"],
                     m["packing_efficiency"], m["input_truncated"] / n, m["target_truncated"], m["turned"] / n,
                     "ok" if s["leakage"]["ok"] else "LEAK", len(s["eval"]), dirty))
    parts.append(table(["split", "held out", "examples", "rows", "tokens", "packing efficiency", "inputs truncated",
                        "targets cut", "turned share", "held-out check", "eval sets", "dirty eval examples"], rows,
                       numeric=range(2, 12)))
    for i, (name, s) in enumerate(doc["splits"].items()):
        head = (f"{name}: {s['summary']['examples']:,} examples in {len(s['datasets'])} datasets, "
                f"{len(s['eval'])} eval sets")
        parts.append(f"<details{' open' if i == 0 else ''}><summary class=\"h3\">{esc(head)}</summary>")
        if s["manifest_mismatches"]:
            parts.append("<p class=\"error\">data disagrees with the manifest: "
                         + esc("; ".join(s["manifest_mismatches"])) + "</p>")
        parts.append(figure_html(composition_plot(name, s), f"{name}: examples planned (grey) vs realized (blue)"))
        parts.append(table(["dataset", "cluster", "available", "planned", "realized", "planned rate",
                            "realized rate", "input tokens p50", "input tokens p99", "target tokens p50",
                            "target tokens p99", "inputs truncated", "targets cut", "turned share",
                            "majority option share"],
                           [(d, v["cluster"], v["available"], v["planned"], v["realized"], v["planned_rate"],
                             v["realized_rate"], v["input_tokens"]["p50"], v["input_tokens"]["p99"],
                             v["target_tokens"]["p50"], v["target_tokens"]["p99"], v["input_truncated"],
                             v["target_truncated"], v["turned_share"],
                             v["options"]["majority_share"] if v["options"] else None)
                            for d, v in s["datasets"].items()], numeric=range(2, 15)))
        parts.append(figure_html(lengths_plot(name, s), f"{name}: token lengths after truncation"))
        if s.get("formats"):
            names = list(s["formats"])
            parts.append(table(["prompt formats", *names, "all"],
                               [("uses (share)", *(f"{s['formats'][f]['examples']:,} ({s['formats'][f]['share']:.1%})"
                                                  for f in names), s["summary"]["examples"])]
                               + [(d, *(v["formats"].get(f, {}).get("examples", 0) for f in names),
                                   sum(x["examples"] for x in v["formats"].values()))
                                  for d, v in s["datasets"].items() if v.get("formats")]))
        cut = {d: v["truncated_targets"] for d, v in s["datasets"].items() if v["truncated_targets"]}
        if cut:
            parts.append("<details><summary>examples whose target was cut</summary>" + table(
                ["dataset", "example keys (first 50)"], [(d, ", ".join(k)) for d, k in cut.items()]) + "</details>")
        balance = {d: v["options"] for d, v in s["datasets"].items() if v["options"]}
        if balance:
            parts.append(table(["classification dataset", "rows", "answers by option", "answers by position",
                                "majority share", "entropy ratio"],
                               [(d, b["rows"], " · ".join(f"{k} {n}" for k, n in b["labels"].items()),
                                 " · ".join(f"#{k} {n}" for k, n in b["positions"].items()), b["majority_share"],
                                 b["entropy_ratio"]) for d, b in balance.items()], numeric=(1, 4, 5)))
        if s["eval"]:
            parts.append(table(["eval set", "kind", "metric", "rows", "examples", "templates", "majority option share"],
                               [(d, v["kind"], v["metric"], v["rows"], sum(v["examples"].values()), v["templates"],
                                 v["options"]["majority_share"] if v["options"] else None)
                                for d, v in s["eval"].items()], numeric=range(3, 7)))
        parts.append("</details>")
    return parts


def lint_section(doc: dict[str, Any]) -> list[str]:
    lint = doc["lint"]
    parts = ["<h2 id=\"lint\">Lint</h2>",
             table(["rule", "severity", "findings", "rows", "datasets", "what it checks"],
                   [(r, v["severity"], v["findings"], v["rows"], ", ".join(v["datasets"]), v["description"])
                    for r, v in lint["rules"].items()], numeric=(2, 3))]
    if not lint["findings"]:
        return parts + ["<p class=\"ok\">no findings</p>"]
    parts.append(table(["severity", "rule", "dataset", "source", "template", "count", "message"],
                       [(f["severity"], f["rule"], f["dataset"], f["source"], f["template"], f["count"], f["message"])
                        for f in lint["findings"]], numeric=(4, 5)))
    for f in lint["findings"]:
        where = f"{f['dataset']} ({f['source']}" + (f", template {f['template']}" if f["template"] is not None
                                                   else "") + ")"
        parts.append(f"<details><summary><span class=\"{esc(f['severity'])}\">{esc(f['severity'])}</span> "
                     f"{esc(f['rule'])} · {esc(where)}: {esc(f['message'])}</summary>"
                     + "".join(example_html(e) for e in f["examples"]) + "</details>")
    return parts


def _contamination_section(doc: dict[str, Any]) -> list[str]:
    c = doc["contamination"]
    scanned = f"{c['ngrams_scanned']:,}"
    parts = ["<h2 id=\"contamination\">Leakage and contamination</h2>",
             f"<p class=\"meta\">{esc(c['n'])}-gram overlap (lowercased words) between each held-out eval set and "
             f"its split's train mixture; {esc(scanned)} train n-grams scanned in "
             f"{esc(c['seconds'])} s. Template text shared by most examples of an eval set is not counted. Clean "
             f"and dirty example ids are in the JSON (<code>splits.*.contamination.*.clean_ids/dirty_ids</code>).</p>"]
    rows = [(name, d, v["examples"], v["dirty"], v["clean"], v["dirty_share"], v["boilerplate_ngrams"],
             v["matches"][0]["ngram"] if v["matches"] else "")
            for name, s in doc["splits"].items() for d, v in s["contamination"].items()]
    if rows:
        parts.append(figure_html(contamination_plot(doc), "dirty share of each held-out eval set"))
        parts.append(table(["split", "eval set", "examples", "dirty", "clean", "dirty share", "template n-grams "
                            "ignored", "first matching n-gram"], rows, numeric=range(2, 7)))
    parts.append(table(["split", "clusters held out", "clusters in train", "held-out check"],
                       [(n, ", ".join(s["leakage"]["removed_clusters"]), ", ".join(s["leakage"]["train_clusters"]),
                         "ok" if s["leakage"]["ok"] else "LEAK: " + ", ".join(x["dataset"] for x in
                                                                             s["leakage"]["leaked"]))
                        for n, s in doc["splits"].items()]))
    decon = doc.get("decontamination")
    if decon:  # what the compile dropped before mixing (decontaminate)
        parts.append(f"<p class=\"meta\">The compile dropped {decon['dropped']:,} "
                     f"train examples sharing a {esc(decon['ngram'])}-gram with eval sets (against: "
                     f"{esc(decon['against'])}) before mixing.</p>")
        parts.append(table(["dataset", "dropped", "checked against", "first keys dropped"],
                           [(d, v["dropped"], ", ".join(v["against"]), ", ".join(v["keys"][:5]))
                            for d, v in decon["datasets"].items()], numeric=[1]))
    return parts


def _datasets_section(doc: dict[str, Any]) -> list[str]:
    parts = ["<h2 id=\"templates\">Templates</h2>", figure_html(template_plot(doc), "template usage per dataset"),
             "<h2 id=\"datasets\">Datasets</h2>"]
    for d, info in doc["datasets"].items():
        head = (f"{d} · {info['cluster']} · {info['kind'] or '?'} · trained in {len(info['trained_in'])} split(s)"
                + (f" · evaluated in {', '.join(info['evaluated_in'])}" if info["evaluated_in"] else ""))
        body = []
        for source, samples in info["samples"].items():
            body.append(f"<h4>sample render of each template ({esc(source)})</h4>")
            body += [example_html(e) for e in samples.values()]
        parts.append(f"<details id=\"ds-{esc(_slug(d))}\"><summary>{esc(head)}</summary>{''.join(body)}</details>")
    return parts


def render_html(doc: dict[str, Any]) -> str:
    """The whole report; every data string is escaped and nothing is loaded from the network."""
    pipeline = doc.get("pipeline", {})
    sections: list[Callable[[dict[str, Any]], list[str]]] = [_splits_section, lint_section, _contamination_section]
    body = [f"<h1>flanpipe audit: {esc(pipeline.get('name'))}</h1>",
            f"<div class=\"meta\">{esc(doc['directory'])} · pipeline hash {esc(str(pipeline.get('hash'))[:12])} · "
            f"{esc(doc['format'])} · error rules: {esc(', '.join(doc['status']['error_rules']))}</div>",
            _cards(doc),
            "<nav><a href=\"#mixtures\">mixtures</a> · <a href=\"#packing\">packing</a> · <a href=\"#lint\">lint</a>"
            " · <a href=\"#contamination\">contamination</a> · <a href=\"#templates\">templates</a> · "
            "<a href=\"#datasets\">datasets</a></nav>"]
    body += sections[0](doc)
    body += ["<h2 id=\"packing\">Packing</h2>", figure_html(packing_plot(doc), "packing efficiency per shard"),
             table(["split", "shard", "rows", "tokens", "packing efficiency"],
                   [(n, sh["file"], sh["rows"], sh["tokens"], sh["packing_efficiency"])
                    for n, s in doc["splits"].items() for sh in s["shards"]], numeric=(2, 3, 4))]
    for section in sections[1:]:
        body += section(doc)
    body += _datasets_section(doc)
    return page(f"flanpipe audit: {pipeline.get('name')}", body)


def page(title: str, body: Sequence[str]) -> str:
    """A whole self-contained page: the report's style, the given body parts, the sorting script."""
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
            f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
            + "\n".join(body) + f"<script>{SCRIPT}</script></body></html>\n")
