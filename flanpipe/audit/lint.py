"""Lint of rendered examples (train mixtures and eval sets): each rule yields findings with example rows."""

from __future__ import annotations

import heapq
import math
import re
import statistics
from array import array
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from flanpipe.audit.stats import split_options
from flanpipe.formats import has_options
from flanpipe.spec import OptionsFormat


@dataclass(frozen=True)
class Rule:
    """A lint rule: its default severity and what it checks."""

    severity: str  # "error" fails `flanpipe audit`; "warning" is reported only
    description: str


RULES: dict[str, Rule] = {
    "empty": Rule("error", "An input (without its OPTIONS suffix) or a target is empty."),
    "answer_leak": Rule("error", "A template's target appears verbatim in its input (OPTIONS suffix excluded) in most "
                                 "of its rows, far more often than in the dataset's other templates."),
    "answer_in_input": Rule("warning", "Targets appear verbatim in the inputs in most templates of a dataset: an "
                                       "extractive task (SQuAD-like), or every template leaks."),
    "unused_variables": Rule("warning", "A template's renders do not depend on the example (constant input or "
                                        "target), or map many distinct examples to the same input."),
    "missing_options": Rule("warning", "A classification input (not turned, not a 'noopt' use) lacks the OPTIONS "
                                       "suffix (any configured header and item style), or a generation dataset's "
                                       "targets are a handful of class labels with no OPTIONS."),
    "control_chars": Rule("warning", "Control characters (other than tab/newline/CR), U+FFFD, BOM or non-characters "
                                     "in an input or target."),
    "duplicates": Rule("warning", "Rows of different examples of one dataset with identical input and target."),
    "length_outlier": Rule("warning", "An input or target far outside its dataset's usual length (robust z-score "
                                      "on log characters)."),
}

_BAD_CHARS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ufeff\ufffd\ufffe\uffff]")
_NON_WORD = re.compile(r"[\W_]+")
MAX_TEXT = 2000  # characters of a text kept in a finding's example


@dataclass(frozen=True)
class LintSettings:
    """Thresholds of the lint rules (defaults documented in docs/audit.md)."""

    examples: int = 3
    min_template_rows: int = 3
    leak_share: float = 0.5
    leak_excess: float = 0.5
    label_max_distinct: int = 10
    label_max_words: int = 3
    label_min_rows: int = 20
    collapse_ratio: float = 0.5
    collapse_min_examples: int = 5
    template_sample: int = 1000
    outlier_z: float = 5.0
    outlier_ratio: float = 8.0
    outlier_min_rows: int = 20


def normalize(text: str) -> str:
    """Lowercase, words only, single spaces: the form in which targets are compared as class labels."""
    return _NON_WORD.sub(" ", text.lower()).strip()


def example_row(*, split: str, source: str, key: str, variant: int, template: int, inputs: str, targets: str,
                note: str = "") -> dict[str, Any]:
    """One example row as shown in a finding (texts cut to MAX_TEXT characters)."""
    return {"split": split, "source": source, "example_key": key, "variant": variant, "template": template,
            "inputs": _cut(inputs), "targets": _cut(targets), "note": note}


def _cut(text: str) -> str:
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT] + f"… [{len(text) - MAX_TEXT} more characters]"


class Hits:
    """A count and the first few example rows."""

    def __init__(self, keep: int):
        self.count, self.keep, self.examples = 0, keep, []  # type: ignore[var-annotated]

    def add(self, make: Any) -> None:
        self.count += 1
        if len(self.examples) < self.keep:
            self.examples.append(make())


@dataclass
class _Template:
    rows: int = 0
    turned: bool = False
    leak_rows: int = 0  # rows whose input names the target and no other option
    mislead_rows: int = 0  # rows whose input names another option but not the target
    keys: set[int] = field(default_factory=set)
    bodies: dict[int, str] = field(default_factory=dict)  # body hash -> first example key
    targets: set[int] = field(default_factory=set)


class _Group:
    """Everything lint keeps about one dataset's train rows or eval rows."""

    def __init__(self, dataset: str, source: str, keep: int):
        self.dataset, self.source, self.keep = dataset, source, keep
        self.rows = 0
        self.templates: dict[int, _Template] = defaultdict(_Template)
        self.hits: dict[tuple[str, int | None], Hits] = {}
        self.firsts: dict[int, list[dict[str, Any]]] = defaultdict(list)  # template -> first rows
        self.codepoints: Counter[str] = Counter()
        self.texts: dict[int, str] = {}  # hash of (input, target) -> first example key
        self.repeats: Counter[int] = Counter()  # rows beyond the first of a text
        self.shared: set[int] = set()  # texts of two or more examples
        self.non_turned = self.with_suffix = 0
        self.labels: Counter[str] | None = Counter()
        self.label_rows: list[dict[str, Any]] = []
        self.lengths: dict[str, array[int]] = defaultdict(lambda: array("I"))
        self.extremes: dict[str, list[tuple[int, int, int, dict[str, Any]]]] = defaultdict(list)
        self.samples: dict[int, dict[str, Any]] = {}

    def hit(self, rule: str, template: int | None = None) -> Hits:
        return self.hits.setdefault((rule, template), Hits(self.keep))


class Lint:
    """Accumulates rows of every split and eval set, then ``findings`` applies the rules."""

    def __init__(self, fmt: OptionsFormat, kinds: Mapping[str, str], settings: LintSettings = LintSettings()):
        self.fmt, self.kinds, self.settings = fmt, dict(kinds), settings
        self.groups: dict[tuple[str, str], _Group] = {}

    def add_rows(self, rows: Iterable[Mapping[str, Any]], *, split: str, source: str) -> None:
        """Rows of examples/*.parquet (source "train"), eval/<dataset>.parquet (source "eval") or audited files
        (source "file").

        Each row must come once: pass a dataset's train rows from one split and each eval set once
        (``audit_output`` picks, per dataset, the split whose mixture holds the most of its rows).
        """
        for r in rows:
            dataset = r["dataset"]
            group = self.groups.get((dataset, source))
            if group is None:
                group = self.groups[(dataset, source)] = _Group(dataset, source, self.settings.examples)
            variant = r.get("variant", 0) or 0
            self._row(group, r, r["split"] if source == "eval" else split, variant)

    def _row(self, g: _Group, r: Mapping[str, Any], split: str, variant: int) -> None:
        key, template, turned = r["example_key"], int(r["template"]), bool(r["turned"])
        inputs, targets = r["inputs"], r["targets"]
        options: list[str] | None = list(r["options"]) if r.get("options") else None
        body, parsed = inputs, None
        # A 'noopt' use (prompt formats) leaves the OPTIONS suffix out on purpose: it is neither a missing
        # suffix nor evidence about the dataset's kind.
        noopt = not has_options(r.get("format") or "zsopt")
        if not turned:
            body, parsed = split_options(inputs, self.fmt)
            options = options or parsed
            if not noopt:
                g.non_turned += 1
                g.with_suffix += parsed is not None
        g.rows += 1

        def ex(note: str = "") -> dict[str, Any]:
            return example_row(split=split, source=g.source, key=key, variant=variant, template=template,
                               inputs=inputs, targets=targets, note=note)

        if template not in g.samples:
            g.samples[template] = ex("turned" if turned else "")
        if len(g.firsts[template]) < g.keep:
            g.firsts[template].append(ex())
        if not body.strip() or not targets.strip():
            g.hit("empty").add(lambda: ex("empty input" if not body.strip() else "empty target"))
        bad = _BAD_CHARS.findall(inputs) + _BAD_CHARS.findall(targets)
        if bad:
            points = sorted({f"U+{ord(c):04X}" for c in bad})
            g.codepoints.update(points)
            g.hit("control_chars").add(lambda: ex(", ".join(points)))
        t = g.templates[template]
        t.rows += 1
        t.turned = turned
        norm_target = normalize(targets)
        reveals = _reveals(body, targets, options) if targets else 0
        if reveals > 0:
            t.leak_rows += 1
            g.hit("answer_leak", template).add(ex)
        t.mislead_rows += reveals < 0
        if len(t.keys) < self.settings.template_sample:  # bounded memory: judged on a sample
            t.keys.add(hash(key))
            t.targets.add(hash(targets))
            # the whole input: per-example options (ReCoRD, COPA) are part of what the example contributes
            first = t.bodies.setdefault(hash(inputs), key)
            if first != key:
                g.hit("collapse", template).add(lambda: ex(f"same input as {first}"))
        if not turned and not noopt:
            if parsed is None:
                g.hit("missing_options", template).add(ex)
            if g.labels is not None and parsed is None:
                g.labels[norm_target] += 1
                if len(g.labels) > self.settings.label_max_distinct:
                    g.labels = None
                elif len(g.label_rows) < g.keep:
                    g.label_rows.append(ex())
        text_key = hash((template, inputs, targets)) if g.source == "eval" else hash((inputs, targets))
        first_text = g.texts.get(text_key)
        if first_text is None:
            g.texts[text_key] = key
        else:
            g.repeats[text_key] += 1
            if first_text != key and text_key not in g.shared:
                g.shared.add(text_key)
                g.hit("duplicates").add(lambda: ex(f"same input and target as {first_text}"))
        for part, text in (("input", inputs), ("target", targets)):
            if part == "target" and options:
                continue  # a class label: its length is the option's, not a property of the example
            # turned templates write the task backwards: their lengths form a separate distribution
            name = part + (" of a turned template" if turned else "")
            g.lengths[name].append(len(text))
            _keep_extremes(g.extremes, name, len(text), g.rows, ex, g.keep)

    def findings(self) -> list[dict[str, Any]]:
        """Every finding, errors first (see docs/audit.md, ``lint.findings``)."""
        out: list[dict[str, Any]] = []
        for (dataset, source), g in sorted(self.groups.items()):
            kind = self.kind_of(dataset) or "generation"
            base = {"dataset": dataset, "source": source}
            out += _simple(g, base)
            out += self._leaks(g, base)
            out += self._unused(g, base, kind)
            out += self._options(g, base, kind)
            out += self._outliers(g, base)
        for f in out:
            f["severity"] = RULES[f["rule"]].severity
        return sorted(out, key=lambda f: (f["severity"] != "error", f["rule"], f["dataset"], f["source"],
                                          -1 if f["template"] is None else f["template"]))

    def samples(self) -> dict[str, dict[str, dict[str, dict[str, Any]]]]:
        """The first row of each template of each dataset: {dataset: {source: {template: row}}}."""
        out: dict[str, dict[str, dict[str, dict[str, Any]]]] = defaultdict(dict)
        for (dataset, source), g in sorted(self.groups.items()):
            out[dataset][source] = {str(t): row for t, row in sorted(g.samples.items())}
        return dict(out)

    def kind_of(self, dataset: str) -> str | None:
        """The dataset's kind: from the manifests when known, else inferred from its OPTIONS suffixes."""
        if dataset in self.kinds:
            return self.kinds[dataset]
        groups = [g for (d, _), g in self.groups.items() if d == dataset]
        non_turned = sum(g.non_turned for g in groups)
        if not non_turned:
            return None
        return "classification" if sum(g.with_suffix for g in groups) / non_turned >= 0.5 else "generation"

    def _leaks(self, g: _Group, base: dict[str, Any]) -> list[dict[str, Any]]:
        out = []
        # turned templates have other targets (a hypothesis, a question) than the task's answer, so
        # they are compared with each other only
        for turned in (False, True):
            templates = {t: v for t, v in g.templates.items() if v.turned == turned}
            out += self._template_leaks(g, base, templates, "turned templates" if turned else "templates")
        return out

    def _template_leaks(self, g: _Group, base: dict[str, Any], templates: dict[int, _Template], kind: str
                        ) -> list[dict[str, Any]]:
        s = self.settings
        # net share: a template that names one fixed option ("is it acceptable?") reveals the rows with
        # that answer and misleads the others, so it nets out near 0; a real leak nets near 1
        shares = {t: (v.leak_rows - v.mislead_rows) / v.rows for t, v in templates.items()
                  if v.rows >= s.min_template_rows}
        out = []
        for t, share in sorted(shares.items()):
            others = [v for u, v in shares.items() if u != t]
            baseline = statistics.median(others) if others else 0.0
            if share >= s.leak_share and share - baseline >= s.leak_excess:
                hits = g.hits[("answer_leak", t)]
                out.append(_finding("answer_leak", base, t, hits, templates[t].rows,
                                    f"template {t}: the input names the target in {hits.count} of "
                                    f"{templates[t].rows} rows (net of rows naming a wrong option: {share:.0%}; "
                                    f"other {kind}: {baseline:.0%})"))
        if not out and shares and statistics.median(shares.values()) >= s.leak_share:
            leak_rows = sum(templates[t].leak_rows for t in shares)
            rows = sum(templates[t].rows for t in shares)
            examples = [e for t in sorted(shares) for e in g.hits.get(("answer_leak", t), Hits(0)).examples]
            out.append({**base, "rule": "answer_in_input", "template": None, "count": leak_rows, "rows": rows,
                        "message": f"the input names the target in {leak_rows} of {rows} rows of its {kind} "
                                   f"(median {statistics.median(shares.values()):.0%})",
                        "examples": examples[:g.keep]})
        return out

    def _unused(self, g: _Group, base: dict[str, Any], kind: str) -> list[dict[str, Any]]:
        s = self.settings
        out = []
        # turned templates are exempt: "write a positive review" depends on the label only, by design
        judged = {t: v for t, v in g.templates.items() if not v.turned}
        ratios = {t: len(v.bodies) / len(v.keys) for t, v in judged.items() if len(v.keys) >= s.collapse_min_examples}
        median_ratio = statistics.median(ratios.values()) if ratios else 0.0
        # a constant target is suspicious only where targets normally differ from example to example
        keys = set().union(*(v.keys for v in g.templates.values())) if g.templates else set()
        targets = set().union(*(v.targets for v in g.templates.values())) if g.templates else set()
        many_targets = len(targets) >= 0.5 * len(keys)
        for t, v in sorted(judged.items()):
            n = len(v.keys)
            if n < s.min_template_rows:
                continue
            if len(v.bodies) == 1:
                message = f"template {t}: the input is the same for all {n} examples"
            elif kind == "generation" and len(v.targets) == 1 and many_targets:
                message = f"template {t}: the target is the same for all {n} examples"
            elif t in ratios and ratios[t] < s.collapse_ratio * median_ratio:
                message = (f"template {t}: {len(v.bodies)} distinct inputs for {n} examples (other templates: "
                           f"{median_ratio:.0%} distinct); a variable that varies is likely unused")
            else:
                continue
            hits = g.hits.get(("collapse", t))
            examples = (hits.examples if hits and len(v.bodies) > 1 else g.firsts[t])[:g.keep]
            out.append({**base, "rule": "unused_variables", "template": t, "count": v.rows, "rows": v.rows,
                        "message": message, "examples": examples})
        return out

    def _options(self, g: _Group, base: dict[str, Any], kind: str) -> list[dict[str, Any]]:
        s = self.settings
        out = []
        if kind == "classification":
            for (rule, t), hits in sorted(g.hits.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0)):
                if rule == "missing_options":
                    out.append(_finding("missing_options", base, t, hits, g.templates[t].rows,
                                        f"template {t}: {hits.count} classification input(s) without the OPTIONS "
                                        f"suffix"))
        elif g.labels is not None and 2 <= len(g.labels) and sum(g.labels.values()) >= s.label_min_rows \
                and all(0 < len(label.split()) <= s.label_max_words for label in g.labels):
            # most frequent first; equal counts by label, so the message does not depend on row order
            labels = ", ".join(repr(label) for label, _ in sorted(g.labels.items(), key=lambda kv: (-kv[1], kv[0])))
            out.append({**base, "rule": "missing_options", "template": None, "count": sum(g.labels.values()),
                        "rows": g.rows, "message": f"targets take only {len(g.labels)} values ({labels}) but the "
                                                   f"inputs have no OPTIONS suffix: a classification task declared "
                                                   f"as generation?", "examples": g.label_rows[:g.keep]})
        return out

    def _outliers(self, g: _Group, base: dict[str, Any]) -> list[dict[str, Any]]:
        s = self.settings
        out = []
        for part in sorted(g.lengths):
            lengths = np.log1p(np.asarray(g.lengths[part], np.float64))
            if len(lengths) < s.outlier_min_rows:
                continue
            median = float(np.median(lengths))
            mad = float(np.median(np.abs(lengths - median))) * 1.4826
            far = np.abs(lengths - median)
            # both far in robust units and far as a ratio, so a dataset of near-identical lengths
            # (MAD ~ 0) does not flag every small wobble
            limit = max(s.outlier_z * mad, math.log(s.outlier_ratio))
            count = int((far >= limit).sum())
            if not count:
                continue
            typical = math.expm1(median)
            candidates = sorted(g.extremes[part] + g.extremes["short-" + part],
                                key=lambda x: (-abs(math.log1p(x[2]) - median), -x[1]))
            examples = [e for _, _, length, e in candidates if abs(math.log1p(length) - median) >= limit][:g.keep]
            out.append({**base, "rule": "length_outlier", "template": None, "count": count, "rows": g.rows,
                        "message": f"{count} {part}(s) far from the usual length (median {typical:.0f} characters; "
                                   f"flagged beyond x{math.exp(limit):.1f} or /{math.exp(limit):.1f})",
                        "examples": examples})
        return out


def _reveals(body: str, target: str, options: list[str] | None) -> int:
    """+1 when ``body`` contains ``target`` verbatim (at word boundaries) and no other option; -1 when it
    contains another option but not the target; else 0."""
    others = [o for o in (options or ()) if o and o != target]
    named_target = contains(body, target)
    named_other = any(contains(body, o) for o in others)
    return int(named_target and not named_other) - int(named_other and not named_target)


def contains(text: str, needle: str) -> bool:
    """Whether ``needle`` occurs verbatim in ``text``, not as part of a longer word ("no" is not in "know").

    Example:
      >>> contains("I know, no.", "no"), contains("I know.", "no")
      (True, False)
    """
    start = text.find(needle) if needle else -1
    while start >= 0:
        end = start + len(needle)
        if (start == 0 or not needle[0].isalnum() or not text[start - 1].isalnum()) and \
                (end == len(text) or not needle[-1].isalnum() or not text[end].isalnum()):
            return True
        start = text.find(needle, start + 1)
    return False


def _keep_extremes(extremes: dict[str, list[tuple[int, int, int, dict[str, Any]]]], part: str, length: int,
                   order: int, make: Any, keep: int) -> None:
    """Keep the ``keep`` longest (heap ``part``) and shortest (heap ``short-part``) rows of a part."""
    for name, value in ((part, length), ("short-" + part, -length)):
        heap = extremes[name]
        if len(heap) < keep:
            heapq.heappush(heap, (value, -order, length, make()))
        elif value > heap[0][0]:
            heapq.heapreplace(heap, (value, -order, length, make()))


def _simple(g: _Group, base: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    if ("empty", None) in g.hits:
        h = g.hits[("empty", None)]
        out.append(_finding("empty", base, None, h, g.rows, f"{h.count} of {g.rows} rows have an empty input or "
                                                               f"target"))
    if ("control_chars", None) in g.hits:
        h = g.hits[("control_chars", None)]
        points = ", ".join(f"{p} ×{n}" for p, n in g.codepoints.most_common())
        out.append(_finding("control_chars", base, None, h, g.rows, f"{h.count} rows contain {points}"))
    if ("duplicates", None) in g.hits:
        h = g.hits[("duplicates", None)]
        shared = [1 + g.repeats[text] for text in g.shared]
        out.append({**_finding("duplicates", base, None, h, g.rows, f"{sum(shared)} rows share {len(shared)} "
                                                                       f"texts (input and target) with rows of "
                                                                       f"other examples"), "count": sum(shared)})
    return out


def _finding(rule: str, base: dict[str, Any], template: int | None, hits: Hits, rows: int, message: str
             ) -> dict[str, Any]:
    return {**base, "rule": rule, "template": template, "count": hits.count, "rows": rows, "message": message,
            "examples": list(hits.examples)}
