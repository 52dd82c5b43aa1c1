"""The template sandbox: an immutable Jinja2 sandbox in which one render has bounded cost, and its static refusals.

Templates are data that other people contribute, so neither a template nor an expression may
reach Python objects or the filesystem, nor exhaust a worker. Three layers:

- static refusals (``refusals``), checked by ``flanpipe validate`` and before every compile:
  no ``import``/``include``/``extends``/``from``/``block``, no attribute or item name starting
  with ``_``, no ``str.format``, only allow-listed filters, tests and globals;
- Jinja2's ``ImmutableSandboxedEnvironment`` at run time (no unsafe attributes, no mutation);
- ``TemplateLimits`` at run time: operators, calls and filters that can build large values are
  checked *before* they allocate; loops, macro calls and emitted text are counted per render.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.filters import make_attrgetter
from jinja2.runtime import Context, LoopContext, Macro
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError, safe_range
from jinja2.visitor import NodeTransformer

try:  # the stdlib's own parser of regular expressions (3.11+; sre_parse before)
    from re import _constants as _re_constants, _parser as _re_parser  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover
    import sre_constants as _re_constants  # type: ignore[no-redef]
    import sre_parse as _re_parser  # type: ignore[no-redef]

from flanpipe.errors import did_you_mean
from flanpipe.spec import TemplateLimits

# What a data template may use; everything else is refused statically (and absent at run time).
ALLOWED_FILTERS = frozenset({
    "abs", "batch", "capitalize", "count", "d", "default", "dictsort", "enumerate_lines", "first", "float", "int",
    "items", "join", "last", "length", "list", "lower", "map", "max", "min", "regex_replace", "reject",
    "rejectattr", "replace", "reverse", "round", "select", "selectattr", "slice", "sort", "string", "sum", "title",
    "trim", "truncate", "unique", "upper", "wordcount",
})
ALLOWED_TESTS = frozenset({
    "boolean", "defined", "divisibleby", "eq", "equalto", "even", "false", "float", "ge", "greaterthan", "gt", "in",
    "integer", "iterable", "le", "lessthan", "lower", "lt", "mapping", "ne", "none", "number", "odd", "sameas",
    "sequence", "string", "true", "undefined", "upper", "==", "!=", "<", "<=", ">", ">=",
})
ALLOWED_GLOBALS = ("range",)
EMITTED_FACTOR = 4  # text emitted while rendering one field (macro and block bodies included) <= 4 x output_bytes
_REFUSED_TAGS = {nodes.Extends: "extends", nodes.Include: "include", nodes.Import: "import",
                 nodes.FromImport: "from", nodes.Block: "block"}
_REFUSED_ATTRIBUTES = ("format", "format_map")  # str.format can pad to any width before a limit could see it
# The names the bounding transform calls (a user template cannot name them: they are not declared variables).
_LOOP, _EMIT, _CONCAT = "flanpipe_bounded_loop", "flanpipe_bounded_emit", "flanpipe_bounded_concat"
_INTERNAL = (_LOOP, _EMIT, _CONCAT)
_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d*)(?:\.(\*|\d*))?[hlL]?[a-zA-Z%]")
_GROUP_REFERENCE = re.compile(r"\\(?:\d+|g<[^>]*>)")
_REPEATS = {_re_constants.MAX_REPEAT, _re_constants.MIN_REPEAT, _re_constants.POSSESSIVE_REPEAT}
_GROUP_REFS = {_re_constants.GROUPREF, _re_constants.GROUPREF_EXISTS}


class LimitExceeded(Exception):
    """A render went past one of the pipeline's ``template_limits`` (turned into a TemplateError by the caller)."""

    def __init__(self, setting: str, limit: float, what: str):
        self.setting, self.limit, self.what = setting, limit, what
        super().__init__(f"{what}: exceeds template_limits.{setting} = {limit:,}")


# ------------------------------------------------------------------------ static refusals
def refusals(ast: nodes.Template, known_filters: Iterable[str] = ALLOWED_FILTERS) -> list[tuple[int, str]]:
    """Every construct of ``ast`` a data template may not use, as (template line, message), in line order."""
    found: list[tuple[int, str]] = []
    for node in ast.find_all(nodes.Node):
        tag = _REFUSED_TAGS.get(type(node))
        if tag is not None:
            found.append((node.lineno, f"{{% {tag} %}} is not allowed: a template is one field and cannot load "
                                       f"or define other templates"))
        elif isinstance(node, nodes.Getattr) and (node.attr.startswith("_") or node.attr in _REFUSED_ATTRIBUTES):
            found.append((node.lineno, f"attribute {node.attr!r} is not allowed"
                          + (" (names starting with '_' are internal)" if node.attr.startswith("_")
                             else "; join text with '~'")))
        elif (isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const)
              and isinstance(node.arg.value, str) and node.arg.value.startswith("_")):
            found.append((node.lineno, f"item {node.arg.value!r} is not allowed (names starting with '_' are "
                                       f"internal)"))
        elif isinstance(node, nodes.Filter) and node.name not in known_filters:
            found.append((node.lineno, f"filter {node.name!r} is not allowed{did_you_mean(node.name, known_filters)}; "
                                       f"allowed: {', '.join(sorted(known_filters))}"))
        elif isinstance(node, nodes.Filter) and node.name in ("regex_replace", "map"):
            args = node.args[1:] if node.name == "map" else node.args
            if node.name == "map" and not (node.args and isinstance(node.args[0], nodes.Const)
                                           and node.args[0].value == "regex_replace"):
                continue
            if not args or not isinstance(args[0], nodes.Const) or not isinstance(args[0].value, str):
                found.append((node.lineno, "regex_replace: the pattern must be a string literal"))
            elif (why := regex_refusal(args[0].value)) is not None:
                found.append((node.lineno, f"regex_replace pattern {args[0].value!r}: {why}"))
        elif isinstance(node, nodes.Test) and node.name not in ALLOWED_TESTS:
            found.append((node.lineno, f"test {node.name!r} is not allowed{did_you_mean(node.name, ALLOWED_TESTS)}"))
    return sorted(found, key=lambda f: f[0])


def regex_refusal(pattern: str) -> str | None:
    """Why ``pattern`` may not be used by regex_replace, or None.

    Python's regex engine backtracks; what makes that exponential is a quantifier over something
    that itself repeats or has alternatives (``(a+)+``, ``(a|ab)*``, ``(a?)*``) and backreferences.
    Those are refused; everything else costs at most a polynomial of the (bounded) text.
    """
    try:
        parsed = _re_parser.parse(pattern)
    except re.error as e:
        return f"not a valid regular expression ({e})"
    return _regex_items(list(parsed), False)


def _regex_items(items: list[tuple[Any, Any]], repeated: bool) -> str | None:
    for op, av in items:
        found = None
        if op in _REPEATS:
            _, most, body = av
            if repeated:
                return "a quantifier inside a repeated group can backtrack exponentially; write it without nesting"
            found = _regex_items(list(body), most > 1)
        elif op is _re_constants.BRANCH:
            if repeated:
                return "alternatives inside a repeated group can backtrack exponentially; use a character class"
            for branch in av[1]:
                found = found or _regex_items(list(branch), repeated)
        elif op is _re_constants.SUBPATTERN:
            found = _regex_items(list(av[-1]), repeated)
        elif op in (_re_constants.ASSERT, _re_constants.ASSERT_NOT):
            found = _regex_items(list(av[1]), repeated)
        elif op is _re_constants.ATOMIC_GROUP:
            found = _regex_items(list(av), repeated)
        elif op in _GROUP_REFS:
            return "backreferences are not allowed"
        if found:
            return found
    return None


# ------------------------------------------------------------------------ sizes
def _size(value: Any) -> int:
    """Characters of every string plus items of every container in ``value`` (shared items counted each time)."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, (list, tuple)):
        return len(value) + sum(_size(v) for v in value if isinstance(v, (str, list, tuple, dict)))
    if isinstance(value, dict):
        return len(value) + sum(_size(k) + _size(v) for k, v in value.items())
    return 1


def _check(size: int, limits: TemplateLimits, what: str) -> None:
    if size > limits.output_bytes:
        raise LimitExceeded("output_bytes", limits.output_bytes, f"{what} would be {size:,} long")


class _Budget:
    """What one render has used so far (kept on its context's EvalContext, which every macro of it shares)."""

    __slots__ = ("steps", "depth", "emitted")

    def __init__(self) -> None:
        self.steps = self.depth = self.emitted = 0


def _budget(context: Context) -> _Budget:
    eval_ctx = context.eval_ctx
    budget = getattr(eval_ctx, "flanpipe_budget", None)
    if budget is None:
        budget = eval_ctx.flanpipe_budget = _Budget()  # type: ignore[attr-defined]
    return budget


# ------------------------------------------------------------------------ the environment
class BoundedEnvironment(ImmutableSandboxedEnvironment):
    """The one kind of Jinja2 environment every template and expression runs in, with ``limits`` enforced."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, limits: TemplateLimits, extra_filters: dict[str, Callable[..., Any]] | None = None):
        super().__init__(undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=False)
        self.limits = limits
        self._safe_patterns: set[str] = set()
        self.globals.clear()
        self.globals["range"] = safe_range
        # The bounding transform's calls; not re-checked by ``call`` (they check themselves).
        self._internals = (jinja2.pass_context(lambda context, iterable: self._loop(context, iterable)),
                           jinja2.pass_context(lambda context, value: self._emit(context, value)),
                           lambda *parts: self._concat(*parts))
        self.globals.update(zip(_INTERNAL, self._internals))
        filters = {**self.filters, "regex_replace": self._regex_replace, **(extra_filters or {})}
        self.filters = {name: self._bounded_filter(name, f) for name, f in filters.items() if name in ALLOWED_FILTERS}
        self.tests = {name: t for name, t in self.tests.items() if name in ALLOWED_TESTS}

    # -- compile: every template and expression goes through the bounding transform
    def compile(self, source: Any, name: str | None = None, filename: str | None = None, raw: bool = False,
                defer_init: bool = False) -> Any:
        if isinstance(source, str):
            source = self._parse(source, name, filename)
        source = _Bound().visit(source)
        source.set_environment(self)
        return super().compile(source, name, filename, raw, defer_init)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        if getattr(value, "__name__", None) in _REFUSED_ATTRIBUTES and isinstance(getattr(value, "__self__", None), str):
            raise SecurityError(f"str.{value.__name__} is not allowed; join text with '~'")
        return None

    # -- run time checks
    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        limits = self.limits
        if operator == "*":
            seq, times = (left, right) if isinstance(right, int) else (right, left)
            if isinstance(seq, (str, list, tuple)) and isinstance(times, int) and times > 0:
                _check(_size(seq) * times, limits, f"'*' repeating a {type(seq).__name__} {times:,} times")
            elif isinstance(left, int) and isinstance(right, int):
                self._bits(left.bit_length() + right.bit_length(), "'*'")
        elif operator == "**":
            if isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
                self._bits(left.bit_length() * right, f"'**' with exponent {right:,}")
        elif operator == "+":
            if isinstance(left, (str, list, tuple)) and isinstance(right, (str, list, tuple)):
                _check(_size(left) + _size(right), limits, "'+'")
        elif operator == "%" and isinstance(left, str):
            for spec in _PERCENT_SPEC.finditer(left):
                for number in spec.groups():
                    if number == "*" or (number and int(number) > limits.output_bytes):
                        raise LimitExceeded("output_bytes", limits.output_bytes,
                                            f"'%' format {spec.group(0)!r} pads to an unchecked width")
        return self.binop_table[operator](left, right)

    def _bits(self, bits: int, what: str) -> None:
        if bits > self.limits.integer_bits:
            raise LimitExceeded("integer_bits", self.limits.integer_bits, f"{what} would give a {bits:,}-bit integer")

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        if not __self.is_safe_callable(__obj):
            raise SecurityError(f"{__obj!r} is not safely callable")
        if any(__obj is f for f in __self._internals):
            return __context.call(__obj, *args, **kwargs)
        limits = __self.limits
        if isinstance(__obj, (Macro, LoopContext)):  # a macro, caller() or a recursive loop: counted and nested
            budget = _budget(__context)
            __self._step(budget)
            if budget.depth >= limits.recursion:
                raise LimitExceeded("recursion", limits.recursion, "macro or recursive loop calls nested too deep")
            if isinstance(__obj, LoopContext) and args:
                args = (__self._loop(__context, args[0]), *args[1:])
            budget.depth += 1
            try:
                result = __context.call(__obj, *args, **kwargs)
            finally:
                budget.depth -= 1
        else:
            args = _precheck_method(__obj, args, limits)
            result = __context.call(__obj, *args, **kwargs)
        if isinstance(result, (str, list, tuple, dict)):
            _check(len(result), limits, f"the result of {getattr(__obj, '__name__', 'a call')}()")
        return result

    def _step(self, budget: _Budget) -> None:
        budget.steps += 1
        if budget.steps > self.limits.steps:
            raise LimitExceeded("steps", self.limits.steps, "loop iterations and macro calls")

    def _loop(self, context: Context, iterable: Any) -> Iterator[Any]:
        budget = _budget(context)
        for item in iterable:
            self._step(budget)
            yield item

    def _emit(self, context: Context, value: Any) -> str:
        text = str(value)
        budget = _budget(context)
        budget.emitted += len(text)
        _check_emitted(budget.emitted, self.limits)
        return text

    def _concat(self, *parts: Any) -> str:
        texts = [str(p) for p in parts]
        _check(sum(map(len, texts)), self.limits, "'~'")
        return "".join(texts)

    def _regex_replace(self, value: Any, pattern: str, replacement: str = "") -> str:
        """``value`` with every match of ``pattern`` replaced (Python ``re`` syntax), within the limits."""
        if pattern not in self._safe_patterns:  # a pattern computed at run time: checked as validate would
            why = regex_refusal(pattern) if isinstance(pattern, str) else "the pattern must be a string"
            if why is not None:
                raise SecurityError(f"regex_replace pattern {pattern!r}: {why}")
            self._safe_patterns.add(pattern)
        text, limits = str(value), self.limits
        refs = len(_GROUP_REFERENCE.findall(replacement))
        # Matches do not overlap, so group references expand to at most the text's length each, in all.
        worst = len(text) * (1 + refs) + (len(text) + 1) * len(replacement)
        if worst > limits.output_bytes:  # count the matches to bound the result before building it
            count = matched = 0
            for m in re.finditer(pattern, text):
                count, matched = count + 1, matched + m.end() - m.start()
            _check(len(text) - matched + count * len(replacement) + refs * matched, limits, "regex_replace")
        return re.sub(pattern, replacement, text)

    def _bounded_filter(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        offset = 1 if hasattr(fn, "jinja_pass_arg") else 0  # the environment/context comes first
        limits, most = self.limits, self.limits.output_bytes
        prechecked = name in _PRECHECKED_FILTERS

        @functools.wraps(fn)
        def bounded(*args: Any, **kwargs: Any) -> Any:
            if prechecked:
                args = _precheck_filter(name, args, offset, kwargs, self, limits)
            result = fn(*args, **kwargs)
            if isinstance(result, (str, list, tuple, dict)) and len(result) > most:
                _check(len(result), limits, f"the result of the {name!r} filter")
            return result

        return bounded


def _arg(args: Sequence[Any], kwargs: dict[str, Any], index: int, name: str, default: Any = None) -> Any:
    if len(args) > index:
        return args[index]
    return kwargs.get(name, default)


def _replace_size(text: str, old: str, new: str, count: Any) -> int:
    n = len(text) + 1 if old == "" else text.count(old)
    if isinstance(count, int) and count >= 0:
        n = min(n, count)
    return len(text) + n * (len(new) - len(old))


def _precheck_filter(name: str, args: tuple[Any, ...], offset: int, kwargs: dict[str, Any],
                     env: BoundedEnvironment, limits: TemplateLimits) -> tuple[Any, ...]:
    """Refuse a filter call whose result would be over the limits, before it is built."""
    rest = args[offset:]
    if not rest:
        return args
    value = rest[0]
    if name == "replace":
        old, new = str(_arg(rest, kwargs, 1, "old", "")), str(_arg(rest, kwargs, 2, "new", ""))
        _check(_replace_size(str(value), old, new, _arg(rest, kwargs, 3, "count")), limits, "the 'replace' filter")
    elif name == "join":
        items = list(value)
        attribute = _arg(rest, kwargs, 2, "attribute")
        shown = [make_attrgetter(env, attribute)(x) for x in items] if attribute is not None else items
        sep = str(_arg(rest, kwargs, 1, "d", ""))
        _check(sum(len(str(x)) for x in shown) + len(sep) * max(len(items) - 1, 0), limits, "the 'join' filter")
        return (*args[:offset], items, *rest[1:])
    elif name in ("batch", "slice"):
        count = _arg(rest, kwargs, 1, "linecount" if name == "batch" else "slices", 1)
        if isinstance(count, int) and count > limits.output_bytes:
            raise LimitExceeded("output_bytes", limits.output_bytes, f"the {name!r} filter with {count:,}")
    elif name == "sum":
        start = _arg(rest, kwargs, 2, "start", 0)
        if not isinstance(start, (int, float)) or isinstance(start, bool):
            raise SecurityError("the 'sum' filter adds numbers only")
    return args


_WIDTH_METHODS = ("ljust", "rjust", "center", "zfill")
_PRECHECKED_FILTERS = frozenset({"replace", "join", "batch", "slice", "sum"})


def _precheck_method(obj: Any, args: tuple[Any, ...], limits: TemplateLimits) -> tuple[Any, ...]:
    """Refuse a str method call whose result would be over the limits, before it is built."""
    owner = getattr(obj, "__self__", None)
    if not isinstance(owner, str):
        return args
    name = getattr(obj, "__name__", "")
    if name in _WIDTH_METHODS and args and isinstance(args[0], int):
        _check(args[0], limits, f"str.{name}")
    elif name == "expandtabs":
        tab = args[0] if args and isinstance(args[0], int) else 8
        _check(len(owner) + owner.count("\t") * max(tab, 0), limits, "str.expandtabs")
    elif name == "replace" and len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
        _check(_replace_size(owner, args[0], args[1], args[2] if len(args) > 2 else -1), limits, "str.replace")
    elif name == "join" and args:
        items = list(args[0])
        _check(sum(len(x) for x in items if isinstance(x, str)) + len(owner) * max(len(items) - 1, 0), limits,
               "str.join")
        return (items, *args[1:])
    return args


_BUFFERED = (nodes.Macro, nodes.CallBlock, nodes.FilterBlock, nodes.AssignBlock)


class _Bound(NodeTransformer):
    """Route every loop, every '~' and the text emitted into a buffer through the budget's counters.

    Text a template emits at its top level (loops included) goes straight to the caller, which counts
    it as it arrives (``bounded_concat``); text emitted inside a macro, a call or filter block or a
    ``{% set %}`` block is joined by Jinja into one string first, so it is counted as it is emitted.
    """

    def __init__(self) -> None:
        self.buffered = 0

    def generic_visit(self, node: nodes.Node, *args: Any, **kwargs: Any) -> nodes.Node:
        inside = isinstance(node, _BUFFERED)
        self.buffered += inside
        try:
            return super().generic_visit(node, *args, **kwargs)
        finally:
            self.buffered -= inside

    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)
        node.iter = _internal(_LOOP, [node.iter], node.lineno)
        return node

    def visit_Output(self, node: nodes.Output) -> nodes.Node:
        self.generic_visit(node)
        if self.buffered:
            node.nodes = [_internal(_EMIT, [nodes.Const(n.data, lineno=n.lineno)
                                            if isinstance(n, nodes.TemplateData) else n], n.lineno)
                          for n in node.nodes]
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)
        return _internal(_CONCAT, list(node.nodes), node.lineno)


def _internal(name: str, args: list[nodes.Expr], lineno: int) -> nodes.Call:
    return nodes.Call(nodes.Name(name, "load", lineno=lineno), args, [], None, None, lineno=lineno)


def bounded_concat(pieces: Iterable[str], limits: TemplateLimits) -> str:
    """A template's top-level output joined, counting it as it arrives (see ``_Bound``)."""
    parts, total = [], 0
    for piece in pieces:
        total += len(piece)
        _check_emitted(total, limits)
        parts.append(piece)
    return "".join(parts)


def _check_emitted(total: int, limits: TemplateLimits) -> None:
    if total > limits.output_bytes * EMITTED_FACTOR:
        raise LimitExceeded("output_bytes", limits.output_bytes,
                            f"text emitted while rendering ({total:,} characters, over {EMITTED_FACTOR}x the limit)")


def template_line(tb: Any) -> int | None:
    """The template line where a render failed: the deepest template frame of traceback ``tb``."""
    line = None
    while tb is not None:
        template = tb.tb_frame.f_globals.get("__jinja_template__")
        if template is not None:
            line = template.get_corresponding_lineno(tb.tb_lineno)
        tb = tb.tb_next
    return line
