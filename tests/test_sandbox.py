"""The sandbox: constructs refused statically with file:line, and renders whose cost is bounded by the limits."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from flanpipe.errors import TemplateError
from flanpipe.sandbox import ALLOWED_FILTERS, refusals
from flanpipe.spec import TemplateLimits, load_dataset_file
from flanpipe.templates import CompiledDataset, make_env

from conftest import RTE

FEATURES = {"premise": "The museum opened in 1901.", "hypothesis": "The museum is old.", "label": 0, "idx": 7}
TARGET = '"{{ answer }}"'  # template 0's target in rte.yaml, replaced by each test's template


def _compiled(tmp_path: Path, target: str, limits: TemplateLimits | None = None) -> tuple[CompiledDataset, int]:
    """rte.yaml with template 0's target replaced by ``target`` (a YAML single-quoted string); and its line."""
    path = tmp_path / "rte.yaml"
    text = RTE.read_text()
    line = text[:text.index(TARGET)].count("\n") + 1
    path.write_text(text.replace(TARGET, "'" + target.replace("'", "''") + "'", 1))
    spec, located = load_dataset_file(path)
    return CompiledDataset(spec, located, cluster_title="NLI", limits=limits), line


def _render_error(tmp_path: Path, target: str, limits: TemplateLimits | None = None) -> tuple[str, float]:
    compiled, line = _compiled(tmp_path, target, limits)
    values = compiled.fields_of(FEATURES)
    start = time.perf_counter()
    with pytest.raises(TemplateError) as e:
        compiled.render(values, 0)
    elapsed = time.perf_counter() - start
    message = str(e.value)
    assert message.startswith(f"{tmp_path / 'rte.yaml'}:{line}: templates[0].target: "), message
    return message, elapsed


@pytest.mark.parametrize("target, limit", [
    ('{{ "a" * 10**9 }}', "output_bytes"),  # memory: a gigabyte string
    ('{{ [premise] * 10**8 }}', "output_bytes"),
    ('{{ premise.ljust(10**9) }}', "output_bytes"),
    ('{{ premise|replace("", "x" * 100000) }}', "output_bytes"),
    ('{{ premise|regex_replace("", "y" * 100000) }}', "output_bytes"),
    ('{{ "%999999999d" % 1 }}', "output_bytes"),
    ('{% set s = "x" * 600000 %}{{ s ~ s }}', "output_bytes"),
    ('{% set s = "x" * 900000 %}{{ s }}{{ s }}', "output_bytes"),  # the rendered field itself
    ('{% macro m() %}{% for i in range(1000) %}{{ "x" * 999999 }}{% endfor %}{% endmacro %}{{ m()|length }}',
     "output_bytes"),  # text emitted inside a macro
    ('{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}', "steps"),  # CPU
    ('{% for i in range(100000) %}{% for j in range(100000) %}{{ j }}{% endfor %}{% endfor %}', "steps"),
    ('{{ 7 ** 10000000 }}', "integer_bits"),
    ('{{ (2 ** 4000) * (2 ** 4000) }}', "integer_bits"),
    ('{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}', "recursion"),
    ('{% macro f(n) %}{{ f(n - 1) }}{{ f(n - 1) }}{% endmacro %}{{ f(30) }}', "recursion"),
    ('{% for x in [1] recursive %}{{ loop([1]) }}{% endfor %}', "recursion"),
])
def test_bombs_fail_fast_naming_the_limit(tmp_path, target, limit):
    message, elapsed = _render_error(tmp_path, target)
    assert f"template_limits.{limit} = " in message
    assert elapsed < 2.0, f"took {elapsed:.1f} s"


def test_exponential_branching_is_bounded_by_steps_when_recursion_allows_it(tmp_path):
    message, elapsed = _render_error(tmp_path, '{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}'
                                               '{% endmacro %}{{ f(40) }}', TemplateLimits(recursion=64))
    assert "template_limits.steps = 100,000" in message and elapsed < 5.0


def test_limits_are_configurable_and_the_error_names_the_template_line(tmp_path):
    compiled, _ = _compiled(tmp_path, "{{ answer }}")
    assert compiled.render(compiled.fields_of(FEATURES), 0).targets == "yes"
    message, _ = _render_error(tmp_path, "{{ answer }} {{ premise * 10 }}", TemplateLimits(output_bytes=200))
    assert "exceeds template_limits.output_bytes = 200" in message
    small = TemplateLimits(steps=10)
    message, _ = _render_error(tmp_path, "{% for i in range(20) %}{{ i }}{% endfor %}", small)
    assert "template_limits.steps = 10" in message


def test_a_runtime_error_names_the_line_inside_a_multiline_template(tmp_path):
    path = tmp_path / "rte.yaml"
    text = RTE.read_text().replace('    target: "{{ answer }}"', '    target: |-\n      {{ answer }}\n'
                                   '      {{ premise.nothing.deeper }}', 1)
    path.write_text(text)
    spec, located = load_dataset_file(path)
    compiled = CompiledDataset(spec, located)
    with pytest.raises(TemplateError) as e:
        compiled.render(compiled.fields_of(FEATURES), 0)
    line = next(i for i, t in enumerate(text.splitlines(), 1) if "premise.nothing.deeper" in t)
    assert str(e.value).startswith(f"{path}:{line}: templates[0].target: undefined value")


def test_legitimate_templates_render_as_in_jinjas_own_sandbox():
    import jinja2.sandbox

    plain = jinja2.sandbox.ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined)
    source = ('{% macro item(x) %}- {{ x|trim }}{% endmacro %}{% for w in words %}{{ item(w) }}\n{% endfor %}'
              '{{ words|join(", ")|upper }} {{ (words|length) ** 2 }} {{ "%s!" % words[0] }} {{ "ab" ~ "cd" }}'
              '{% for w in words %}{{ loop.index }}/{{ loop.length }}{% else %}none{% endfor %}'
              '{{ words|map("trim")|list }} {{ "a-b"|replace("-", "+") }} {{ ["x", "y"]|join }}')
    words = [" a", "b "]
    assert make_env().from_string(source).render(words=words) == plain.from_string(source).render(words=words)


# ---------------------------------------------------------------------------- static refusals
@pytest.mark.parametrize("target, message", [
    ('{% include "other.txt" %}', "{% include %} is not allowed"),
    ('{% import "m.j2" as m %}{{ answer }}', "{% import %} is not allowed"),
    ('{% from "m.j2" import x %}{{ answer }}', "{% from %} is not allowed"),
    ('{% extends "base.j2" %}', "{% extends %} is not allowed"),
    ('{% block b %}{{ answer }}{% endblock %}', "{% block %} is not allowed"),
    ("{{ ''.__class__ }}", "attribute '__class__' is not allowed"),
    ("{{ premise._private }}", "attribute '_private' is not allowed"),
    ("{{ premise['__class__'] }}", "item '__class__' is not allowed"),
    ('{{ "{:>9}".format(answer) }}', "attribute 'format' is not allowed"),
    ("{{ answer|center(99) }}", "filter 'center' is not allowed"),
    ("{{ answer|tojson }}", "filter 'tojson' is not allowed"),
    ("{{ answer|upperr }}", "did you mean 'upper'"),
    ("{% if answer is callable %}x{% endif %}", "test 'callable' is not allowed"),
    ("{{ lipsum() }}", "undeclared variable 'lipsum'"),
    ('{{ premise|regex_replace("(a+)+$", "") }}', "a quantifier inside a repeated group"),
    ('{{ premise|regex_replace("(a|ab)*c", "") }}', "alternatives inside a repeated group"),
    ('{{ premise|regex_replace("(a)\\\\1", "") }}', "backreferences are not allowed"),
    ('{{ premise|regex_replace("[", "") }}', "not a valid regular expression"),
    ('{{ premise|regex_replace(hypothesis, "") }}', "the pattern must be a string literal"),
    ('{{ [premise]|map("regex_replace", "(x*)*y")|list }}', "a quantifier inside a repeated group"),
    ("{{ cycler(1, 2) }}", "undeclared variable 'cycler'"),
])
def test_refused_constructs_fail_validation_with_file_and_line(tmp_path, target, message):
    with pytest.raises(TemplateError) as e:
        _compiled(tmp_path, target)
    text = str(e.value)
    line = RTE.read_text()[:RTE.read_text().index(TARGET)].count("\n") + 1
    assert text.startswith(f"{tmp_path / 'rte.yaml'}:{line}: templates[0].target: "), text
    assert message in text


def test_the_collections_regex_patterns_are_accepted_and_a_computed_pattern_is_checked_at_run_time():
    from flanpipe.sandbox import regex_refusal

    for ok in (r"\s+", r"[^\w\s]", r" +([,.;:!?])", r"\[[^\]]*\] ?", r"\s*<br\s*/?>\s*", r"^b''(.*)",
               r"\s*CANNOTANSWER\s*$", r"(?:ab)+", r"(a?b)?"):
        assert regex_refusal(ok) is None, ok
    env = make_env()
    template = env.from_string("{{ text|regex_replace(pattern, '') }}")
    assert template.render(text="a  b", pattern=r"\s+") == "ab"
    with pytest.raises(Exception, match="a quantifier inside a repeated group"):
        template.render(text="a" * 40 + "b", pattern="(a+)+$")


def test_refusals_report_every_construct_with_its_line():
    env = make_env()
    found = refusals(env.parse("{{ a.__x }}\n{% include 'f' %}\n{{ a|wordwrap }}"))
    assert [line for line, _ in found] == [1, 2, 3]
    assert "range" in env.globals and set(env.filters) <= ALLOWED_FILTERS


def test_the_collection_uses_only_allowed_constructs():
    from flanpipe.collection import load_collection

    errors: list = []
    load_collection(errors=errors)
    assert errors == []
