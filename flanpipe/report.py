"""Rich tables that summarise a plan or a compile, for the terminal."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich import box
from rich.table import Table

from flanpipe.plan import Plan, SplitPlan
from flanpipe.sources import Availability
from flanpipe.spec import SamplesSource, TfdsDataSource


def plan_table(plan: Plan) -> Table:
    """One row per split: held-out cluster, clusters removed, datasets kept, examples, top rates."""
    size = plan.pipeline.mixture_size
    size_text = (f"{size.examples:,} examples" if hasattr(size, "examples")
                 else f"{size.steps:,} steps x {size.batch_tokens:,} tokens")  # type: ignore[union-attr]
    table = Table(title=f"{plan.pipeline.name}: {len(plan.splits)} split(s), mixture {size_text}, "
                        f"source {plan.pipeline.source.kind}, seed {plan.pipeline.seed}")
    parts = [("", plan.pipeline)] if plan.pipeline.formats else []
    parts += [(f"{sub.name}: ", sub.pipeline) for sub in plan.submixtures if sub.pipeline.formats]
    if parts:
        table.caption = "prompt formats: " + "; ".join(
            name + ", ".join(f"{f} {share:.0%}" for f, share in p.formats.items()) for name, p in parts)  # type: ignore[union-attr]
    for col in ("split (held out)", "clusters removed", "train datasets", "train examples (capped)",
                "eval datasets", "largest rates"):
        table.add_column(col, overflow="fold")
    for s in plan.splits:
        top = sorted(s.rates.items(), key=lambda kv: (-kv[1], kv[0]))[:3]
        table.add_row(
            s.name,
            ", ".join(s.removed) or "-",
            f"{len(s.train)} in {len({plan.collection.datasets[d].cluster for d in s.train})} clusters",
            _count(sum(n for d in s.train if (n := plan.counts[d]) is not None),
                   sum(plan.counts[d] is None for d in s.train)),
            ", ".join(s.eval) or "-",
            ", ".join(f"{d} {r:.1%}" for d, r in top) or "unknown until the data is prepared",
        )
    return table


def submixtures_table(plan: Plan) -> Table:
    """One row per split and sub-mixture (mixture_of): weight, share, datasets, cap and the allocated share."""
    files = {s.name: s for s in plan.submixtures}
    table = Table(title=f"{plan.pipeline.name}: mixture of {len(plan.submixtures)} sub-mixtures")
    for col in ("split", "sub-mixture", "file", "weight", "share", "train datasets", "cap", "maximum rate",
                "allocated examples", "allocated share"):
        table.add_column(col, overflow="fold", justify="left" if col in ("split", "sub-mixture", "file") else "right")
    for s in plan.splits:
        total = sum(g.weight for g in s.submixtures)
        allocated = sum(s.allocation.values())
        for g in s.submixtures:
            n = sum(s.allocation.get(d, 0) for d in g.train)
            table.add_row(s.name, g.name, files[g.name].path.name, f"{g.weight:g}", f"{g.weight / total:.1%}",
                          str(len(g.train)), f"{files[g.name].pipeline.mixing.cap:,}", f"{g.maximum_rate:,}",
                          f"{n:,}" if s.allocation else "?", f"{n / allocated:.1%}" if allocated else "?")
    return table


def _count(known: int, unknown: int) -> str:
    return f"{known:,}" + (f" + {unknown} unknown" if unknown else "")


def rates_table(plan: Plan, split: SplitPlan) -> Table:
    """Every training dataset of one split with its count, rate and allocated examples."""
    table = Table(title=f"{split.name}: mixing rates")
    for col in ("dataset", "cluster", "examples (capped)", "rate", "allocated"):
        table.add_column(col, justify="right" if col != "dataset" and col != "cluster" else "left")
    for d in split.train:
        n = plan.counts[d]
        table.add_row(d, plan.collection.datasets[d].cluster, "?" if n is None else f"{n:,}",
                      f"{split.rates[d]:.2%}" if d in split.rates else "?",
                      f"{split.allocation.get(d, 0):,}" if split.allocation else ("?" if not split.rates else "by tokens"))
    return table


def compile_table(manifest: Mapping[str, Any]) -> Table:
    """One row per compiled split: examples, rows, tokens, packing efficiency, truncations."""
    table = Table(title=f"compiled {manifest['pipeline']['name']} ({manifest['pipeline']['hash'][:12]})")
    table.box = box.SIMPLE
    table.add_column("split", no_wrap=True)
    for col in ("examples", "rows", "tokens", "packing", "in cut", "tgt cut"):
        table.add_column(col, justify="right", no_wrap=True)
    for name, s in manifest["summary"].items():
        table.add_row(name, f"{s['examples']:,}", f"{s['rows']:,}", f"{s['tokens']:,}",
                      f"{s['packing_efficiency']:.2%}", f"{s['input_truncated']:,}", f"{s['target_truncated']:,}")
    return table


def bad_examples_lines(manifest: Mapping[str, Any]) -> list[str]:
    """One line per dataset with examples dropped under ``bad_examples: skip``, with the first one dropped."""
    lines = []
    for name, info in manifest["datasets"].items():
        bad = info.get("bad_examples") or {}
        if not bad:
            continue
        reasons: dict[str, int] = {}
        for split in bad.values():
            for reason, n in split["reasons"].items():
                reasons[reason] = reasons.get(reason, 0) + n
        total = sum(reasons.values())
        first = [f for split in bad.values() for f in split["first"]]
        keys = ", ".join(key for key, _ in first[:5]) + (", ..." if total > 5 else "")
        lines.append(f"skipped {total:,} bad example(s) of {name} ("
                     + ", ".join(f"{r}: {n:,}" for r, n in sorted(reasons.items()))
                     + f"): {keys}; the first: {first[0][1]}")
    return lines


def decontamination_lines(manifest: Mapping[str, Any]) -> list[str]:
    """One line per dataset that decontaminate dropped train examples of (none without decontaminate)."""
    decon = manifest.get("decontamination")
    if not decon:
        return []
    return [f"decontaminate ({decon['ngram']}-grams, against {decon['against']}): dropped {v['dropped']:,} train "
            f"example(s) of {d}: {', '.join(v['keys'][:5])}{', ...' if v['dropped'] > 5 else ''}"
            for d, v in decon["datasets"].items() if v["dropped"]]


def sources_table(rows: list[Availability], source: SamplesSource | TfdsDataSource) -> Table:
    """One row per dataset a pipeline needs: source, state, examples per split, the command that prepares it."""
    where = f"TFDS data_dir {source.data_dir}" if isinstance(source, TfdsDataSource) else f"samples in {source.dir}"
    table = Table(title=f"{len(rows)} dataset(s) from {where}")
    for col in ("dataset", "cluster", "source", "state", "examples per split", "to prepare"):
        table.add_column(col, overflow="fold")
    for r in rows:
        counts = ", ".join(f"{split} {n:,}" for split, n in r.counts.items()) if r.ready else "-"
        todo = "-" if r.ready else (r.command or "-") + (" (manual download first)" if r.manual_download else "")
        table.add_row(r.dataset, r.cluster, r.source, "[green]ready[/]" if r.ready else f"[red]{r.state}[/]",
                      counts, todo)
    return table
