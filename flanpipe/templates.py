"""Sandboxed template rendering: source features -> fields -> (input, target, options) in one of three modes."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import jinja2
import jinja2.runtime
import numpy as np
from jinja2 import meta, nodes

from flanpipe.errors import TemplateError, did_you_mean
from flanpipe.sandbox import (ALLOWED_GLOBALS, BoundedEnvironment, LimitExceeded, bounded_concat, refusals,
                              template_line)
from flanpipe.spec import DatasetSpec, ExprOptions, FeatureField, OptionsFormat, TemplateLimits
from flanpipe.yamlio import Located

Mode = Literal["natural", "dataset_name", "none"]
# The paper writes ten templates per dataset (the bundled collection has exactly ten); a dataset of one's own
# may have fewer, e.g. a single pass-through template.
MAX_TEMPLATES = 10
DEFAULT_OPTIONS_FORMAT = OptionsFormat(header="\n\nOPTIONS:", item="\n- {option}")


def _enumerate_lines(items: Sequence[Any], start: int = 1) -> str:
    """["a", "b"] -> "1. a\\n2. b"."""
    return "\n".join(f"{i}. {item}" for i, item in enumerate(items, start))


def make_env(limits: TemplateLimits | None = None) -> BoundedEnvironment:
    """The Jinja2 environment templates and expressions run in: sandboxed, with ``limits`` on each render."""
    return BoundedEnvironment(limits or TemplateLimits(), {"enumerate_lines": _enumerate_lines})


@dataclass(frozen=True)
class Substitution:
    """A template that only puts variables into text (``Premise: {{ premise }}``; 96% of the collection's):
    rendered by a join, as Jinja would render it, without building a Jinja context."""

    parts: tuple[tuple[bool, str], ...]  # (is a variable, the text or the variable's name)

    @classmethod
    def of(cls, source: str, env: jinja2.Environment) -> Substitution | None:
        """The template as text and variables, or None when it uses anything else (filters, tags, ...)."""
        body = env.parse(source).body
        if not body:
            return cls(())
        if len(body) != 1 or not isinstance(body[0], nodes.Output):
            return None
        parts = []
        for node in body[0].nodes:
            if isinstance(node, nodes.TemplateData):
                parts.append((False, node.data))
            elif isinstance(node, nodes.Name) and node.ctx == "load":
                parts.append((True, node.name))
            else:
                return None
        return cls(tuple(parts))

    def render(self, scope: Mapping[str, Any]) -> str:
        """The rendered text (raises KeyError naming an undefined variable, as StrictUndefined would fail)."""
        return "".join(str(scope[text]) if variable else text for variable, text in self.parts)


@dataclass(frozen=True)
class Rendered:
    """One rendered example."""

    inputs: str
    targets: str
    options: tuple[str, ...]  # empty for generation, and for turned templates
    template: int  # template index, or -1 in the template-free modes
    turned: bool


class CompiledDataset:
    """A dataset's expressions and templates, compiled once and checked against its declared fields."""

    def __init__(self, spec: DatasetSpec, located: Located | None = None, *, cluster_title: str = "",
                 check: bool = True, limits: TemplateLimits | None = None):
        """``located``: the dataset file's line marks, so that errors name file:line. ``check=False`` (workers:
        the driver already checked the same spec) skips the static checks and compiles each template the
        first time it renders. ``limits``: what one render may cost (the pipeline's ``template_limits``)."""
        self.spec = spec
        self.limits = limits or TemplateLimits()
        self.env = make_env(self.limits)
        self.cluster_title = cluster_title
        self._located = located
        self._check = check
        self._path: Path | str = located.path if located is not None else f"<{spec.name}>"
        known: list[str] = []
        self.fields: list[tuple[str, list[str] | None, Any]] = []
        self._top_features = sorted({f.feature.split("/")[0] for f in spec.fields.values() if isinstance(f, FeatureField)})
        for name, field in spec.fields.items():
            if isinstance(field, FeatureField):
                self.fields.append((name, field.feature.split("/"), None))
            else:
                self.fields.append((name, None, self._expression(field.expr, known, ("fields", name, "expr"))))
            known.append(name)
        self.filter = self._expression(spec.filter, known, ("filter",)) if spec.filter else None
        self.options_expr = None
        if isinstance(spec.options, ExprOptions):
            self.options_expr = self._expression(spec.options.expr, known, ("options", "expr"))
        self.answer_expr = self._expression(spec.answer, known, ("answer",)) if spec.answer else None
        self.templates: list[tuple[jinja2.Template | Substitution, jinja2.Template | Substitution] | None] = \
            [None] * len(spec.templates)
        if not check:
            return
        for i, name in enumerate(spec.raw.inputs + [spec.raw.target]):
            if name not in spec.variables():
                loc = ("raw", "inputs", i) if i < len(spec.raw.inputs) else ("raw", "target")
                self._fail(loc, f"unknown field {name!r}{did_you_mean(name, spec.variables())}")
        for i in range(len(spec.templates)):
            self._pair(i)
        self._check_template_set()

    def _pair(self, i: int) -> tuple[jinja2.Template | Substitution, jinja2.Template | Substitution]:
        """Template ``i``'s compiled input and target (compiled on first use)."""
        pair = self.templates[i]
        if pair is None:
            t = self.spec.templates[i]
            pair = self.templates[i] = (self._template(t.input, ("templates", i, "input")),
                                        self._template(t.target, ("templates", i, "target")))
        return pair

    # ----------------------------------------------------------------- static checks
    def error(self, loc: tuple[str | int, ...], message: str, inner_line: int | None = None) -> TemplateError:
        """A TemplateError at ``loc`` of the dataset file (at line ``inner_line`` of the template there)."""
        line = None
        if self._located is not None:
            _, line = self._located.where(loc)
            if inner_line is not None and loc in self._located.text_lines:
                line = self._located.text_lines[loc] + inner_line - 1
        return TemplateError(self._path, line, _dotted(loc), message)

    def _fail(self, loc: tuple[str | int, ...], message: str, inner_line: int | None = None) -> None:
        raise self.error(loc, message, inner_line)

    def _parse(self, source: str, known: Sequence[str], loc: tuple[str | int, ...]) -> None:
        try:
            # Escape sequences Python deprecates (e.g. '\s' in a Jinja string) fail now, not
            # in a later Python: ask for '\\s' in the string instead.
            with warnings.catch_warnings():
                warnings.simplefilter("error", DeprecationWarning)
                ast = self.env.parse(source)
        except DeprecationWarning as e:
            self._fail(loc, f"{e} in a Jinja2 string literal (write a doubled backslash)")
        except jinja2.TemplateSyntaxError as e:
            self._fail(loc, f"Jinja2 syntax error on template line {e.lineno}: {e.message}", e.lineno)
        for inner, message in refusals(ast):
            self._fail(loc, message, inner)
        for var in sorted(meta.find_undeclared_variables(ast)):
            if var not in known and var not in ALLOWED_GLOBALS:
                inner = next((n.lineno for n in ast.find_all(nodes.Name) if n.name == var), None)
                self._fail(loc, f"uses undeclared variable {var!r}{did_you_mean(var, known)}; "
                                f"declared: {', '.join(known) or '(none)'}", inner)

    def _expression(self, source: str, known: Sequence[str], loc: tuple[str | int, ...]) -> Any:
        if self._check:
            self._parse("{{ (" + source + ") }}", known, loc)
        return self.env.compile_expression(source, undefined_to_none=False)

    def _template(self, source: str, loc: tuple[str | int, ...]) -> jinja2.Template | Substitution:
        if self._check:
            self._parse(source, self.spec.variables(), loc)
        return Substitution.of(source, self.env) or self.env.from_string(source)

    def _check_template_set(self) -> None:
        templates = self.spec.templates
        if not 1 <= len(templates) <= MAX_TEMPLATES:
            self._fail(("templates",), f"expected 1 to {MAX_TEMPLATES} templates, found {len(templates)}")
        turned = [i for i, t in enumerate(templates) if t.turned]
        if len(turned) > 3:
            self._fail(("templates", turned[3], "turned"), f"at most 3 templates may be turned, found {len(turned)}")
        if len(turned) == len(templates):
            self._fail(("templates", 0, "turned"), "at least one template must state the task itself (not turned)")
        seen: dict[tuple[str, str], int] = {}
        for i, t in enumerate(templates):
            key = (" ".join(t.input.split()), " ".join(t.target.split()))
            if key in seen:
                self._fail(("templates", i), f"identical to templates[{seen[key]}]")
            seen[key] = i

    # ----------------------------------------------------------------- per example
    def features_used(self, features: Mapping[str, Any], *, plain: bool = False) -> dict[str, Any]:
        """The part of a source example the field map reads (its top-level features), as plain Python.

        ``fields_of`` of this part equals ``fields_of`` of the whole example, so it is what a
        read stage needs to store.
        """
        if plain:  # already plain Python (decoded JSON)
            return {name: features[name] for name in self._top_features if name in features}
        return {name: to_python(features[name]) for name in self._top_features if name in features}

    def fields_of(self, features: Mapping[str, Any], *, plain: bool = False, key: str | None = None
                  ) -> dict[str, Any] | None:
        """Compute the template variables of one source example; None when the filter drops it.

        ``plain``: the features are already plain Python (e.g. decoded JSON), so TFDS values
        need no conversion. ``key``: the example's key, named by any error.

        Raises:
          TemplateError: a feature is missing, an expression fails, or the answer index is out of range.
        """
        try:
            return self._fields_of(features, plain)
        except TemplateError as e:
            raise (e if key is None else e.for_example(key)) from None

    def _fields_of(self, features: Mapping[str, Any], plain: bool) -> dict[str, Any] | None:
        values: dict[str, Any] = {}
        # One scope (globals + the fields so far) and one context serve every expression of
        # the example: building a Jinja context costs more than evaluating a short expression.
        scope = dict(self.env.globals)
        context: list[jinja2.runtime.Context] = []
        for name, path, expr in self.fields:
            if path is not None:
                values[name] = _lookup(features, path, self, name, plain)
            else:
                values[name] = self._evaluate(expr, scope, ("fields", name, "expr"), context)
            scope[name] = values[name]
        if self.filter is not None and not self._evaluate(self.filter, scope, ("filter",), context):
            return None
        if self.spec.kind == "classification":
            options = (self._evaluate(self.options_expr, scope, ("options", "expr"), context)
                       if self.options_expr is not None else self.spec.options.fixed)  # type: ignore[union-attr]
            options = [str(o) for o in options]
            index = self._evaluate(self.answer_expr, scope, ("answer",), context)
            if not isinstance(index, (int, np.integer)) or isinstance(index, bool) or not 0 <= index < len(options):
                raise self.error(("answer",), f"evaluated to {index!r}, expected an option index in "
                                              f"0..{len(options) - 1}")
            values["options"] = options
            values["answer"] = options[int(index)]
        return values

    def _evaluate(self, expr: Any, scope: dict[str, Any], loc: tuple[str | int, ...],
                  context: list[jinja2.runtime.Context]) -> Any:
        """What TemplateExpression.__call__ does, on a context shared by the example's expressions (``context``
        holds it once made): an expression only sets ``result``, which is taken out again."""
        template = expr._template
        try:
            if not context:
                context.append(_context(template, scope))
            for _ in template.root_render_func(context[0]):
                pass
            return context[0].vars.pop("result")
        except Exception as e:  # user expressions may fail in any way; name where and why
            raise self._render_error(e, loc) from None

    def _render_error(self, e: Exception, loc: tuple[str | int, ...]) -> TemplateError:
        """What went wrong in a render, at the template line where it did (from the traceback)."""
        inner = template_line(e.__traceback__)
        if isinstance(e, LimitExceeded):
            return self.error(loc, str(e), inner)
        if isinstance(e, jinja2.exceptions.SecurityError):
            return self.error(loc, f"refused by the sandbox: {e}", inner)
        if isinstance(e, jinja2.UndefinedError):
            return self.error(loc, f"undefined value: {e.message}", inner)
        if isinstance(e, RecursionError):
            return self.error(loc, "recursion too deep", inner)
        return self.error(loc, f"{type(e).__name__}: {e}", inner)

    def render(
        self,
        values: Mapping[str, Any],
        template: int,
        *,
        mode: Mode = "natural",
        options_format: OptionsFormat = DEFAULT_OPTIONS_FORMAT,
        key: str | None = None,
        style: tuple[int, int] = (0, 0),
        with_options: bool = True,
    ) -> Rendered:
        """Render one example's fields with template ``template`` (ignored outside 'natural' mode); ``key``: the
        example's key, named by any error. ``style``: which of ``options_format``'s headers and items the
        OPTIONS suffix uses; ``with_options=False`` leaves the suffix out (the 'noopt' formats) while
        ``options`` still lists the options."""
        try:
            return self._render(values, template, mode, options_format, style, with_options)
        except TemplateError as e:
            raise (e if key is None else e.for_example(key)) from None

    def _render(self, values: Mapping[str, Any], template: int, mode: Mode, options_format: OptionsFormat,
                style: tuple[int, int] = (0, 0), with_options: bool = True) -> Rendered:
        options: tuple[str, ...] = tuple(values["options"]) if self.spec.kind == "classification" else ()
        if mode == "natural":
            spec_t = self.spec.templates[template]
            source_in, source_out = self._pair(template)
            scope = {**self.env.globals, **values}  # one context dict for both templates (see _run)
            inputs = self._run(source_in, scope, ("templates", template, "input"))
            targets = self._run(source_out, scope, ("templates", template, "target"))
            if spec_t.turned:
                return Rendered(inputs, targets, (), template, True)
        else:
            raw = "\n".join(_text(values[name]) for name in self.spec.raw.inputs)
            prefix = f"[{self.cluster_title}: {self.spec.title}] " if mode == "dataset_name" else ""
            inputs, targets, template = prefix + raw, _text(values[self.spec.raw.target]), -1
        if options and with_options:
            inputs += options_suffix(options, options_format, style)
        return Rendered(inputs, targets, options, template, False)

    def _run(self, template: jinja2.Template | Substitution, scope: dict[str, Any], loc: tuple[str | int, ...]) -> str:
        try:
            if isinstance(template, Substitution):
                text = template.render(scope).strip()
            else:
                # Template.render(**values) rebuilds a context from the globals on every call, about half of a
                # short template's cost; a shared context over globals + values renders the same.
                text = bounded_concat(template.root_render_func(_context(template, scope)), self.limits).strip()
        except KeyError as e:  # a Substitution's variable
            raise self.error(loc, f"undefined value: {e} is undefined") from None
        except Exception as e:  # templates may fail in any way; name where and why
            raise self._render_error(e, loc) from None
        limit = self.limits.output_bytes
        if len(text) * 4 > limit and len(text.encode("utf-8")) > limit:  # UTF-8 is at most 4 bytes a character
            raise self.error(loc, f"rendered to {len(text.encode('utf-8')):,} bytes: exceeds "
                                  f"template_limits.output_bytes = {limit:,}")
        return text


def _context(template: jinja2.Template, scope: dict[str, Any]) -> jinja2.runtime.Context:
    """A render context over ``scope`` (globals already in it), as Template.render builds one but without
    copying the globals, or listing them as ``Template.new_context`` does, on every call."""
    return jinja2.runtime.new_context(template.environment, template.name, template.blocks, scope, True, None, None)


def options_suffix(options: Sequence[str], fmt: OptionsFormat = DEFAULT_OPTIONS_FORMAT,
                   style: tuple[int, int] = (0, 0)) -> str:
    """The OPTIONS suffix appended to a classification input, in header ``style[0]`` and item style ``style[1]``."""
    item = fmt.items[style[1]]
    return fmt.headers[style[0]] + "".join(option_item(item, i, o) for i, o in enumerate(options))


def option_item(item: str, index: int, option: str) -> str:
    """Option ``index`` (from 0) written in item style ``item``: its markers first, the option text last, so an
    option that itself contains '{letter}' stays as it is."""
    if "{letter}" in item:
        item = item.replace("{letter}", letter(index))
    if "{roman}" in item:
        item = item.replace("{roman}", roman(index + 1))
    if "{number}" in item:
        item = item.replace("{number}", str(index + 1))
    return item.replace("{option}", option)


def letter(index: int) -> str:
    """0 -> 'A', 25 -> 'Z', 26 -> 'AA' (spreadsheet columns)."""
    out = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        out = chr(ord("A") + rest) + out
    return out


_ROMAN = ((1000, "m"), (900, "cm"), (500, "d"), (400, "cd"), (100, "c"), (90, "xc"), (50, "l"), (40, "xl"),
          (10, "x"), (9, "ix"), (5, "v"), (4, "iv"), (1, "i"))


def roman(number: int) -> str:
    """1 -> 'i', 4 -> 'iv', 14 -> 'xiv' (lower case, as option markers are written)."""
    out = []
    for value, text in _ROMAN:
        count, number = divmod(number, value)
        out.append(text * count)
    return "".join(out)


def _dotted(loc: tuple[str | int, ...]) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")


def _text(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return " ".join(_text(v) for v in value)
    return str(value)


def _lookup(features: Mapping[str, Any], path: list[str], owner: CompiledDataset, field: str, plain: bool = False
            ) -> Any:
    node: Any = features
    for i, part in enumerate(path):
        if not isinstance(node, Mapping) or part not in node:
            have = sorted(node) if isinstance(node, Mapping) else []
            where = "/".join(path[:i]) or "the example"
            raise owner.error(("fields", field),
                              f"feature {'/'.join(path)!r} not found: {where} has no {part!r}"
                              f"{did_you_mean(part, have)}; available: {', '.join(have) or '(none)'}")
        node = node[part]
    return node if plain else to_python(node)


def to_python(value: Any) -> Any:
    """TFDS values -> plain Python: bytes decoded as UTF-8, numpy arrays/scalars to lists/numbers."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray):
        return [to_python(v) for v in value.tolist()] if value.dtype != object else [to_python(v) for v in value]
    if isinstance(value, np.generic):
        return to_python(value.item())
    if isinstance(value, Mapping):
        return {k: to_python(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_python(v) for v in value]
    return value
