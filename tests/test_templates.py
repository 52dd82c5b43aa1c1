"""Templates: static checks at load time, the sandbox, OPTIONS, turned templates, the three modes."""

from __future__ import annotations

from pathlib import Path

import pytest

from flanpipe.errors import TemplateError
from flanpipe.spec import OptionsFormat, load_dataset_file
from flanpipe.templates import CompiledDataset, letter, make_env, option_item, options_suffix, roman

from conftest import RTE

FEATURES = {"premise": b"The museum opened in 1901.", "hypothesis": "The museum is old.", "label": 0, "idx": 7}


def _compiled(tmp_path: Path, old: str | None = None, new: str = "") -> CompiledDataset:
    path = tmp_path / "rte.yaml"
    text = RTE.read_text()
    if old is not None:
        assert old in text
        text = text.replace(old, new, 1)
    path.write_text(text)
    spec, located = load_dataset_file(path)
    return CompiledDataset(spec, located, cluster_title="Natural language inference")


def _line_of(path: Path, needle: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if needle in line)


def test_undeclared_variable_is_named_with_line(tmp_path):
    with pytest.raises(TemplateError) as e:
        _compiled(tmp_path, "Read this: {{ premise }}", "Read this: {{ premis }}")
    path = tmp_path / "rte.yaml"
    msg = str(e.value)
    assert msg.startswith(f"{path}:{_line_of(path, 'Read this')}: templates[1].input: uses undeclared variable 'premis'")
    assert "did you mean 'premise'" in msg


def test_jinja_syntax_error_gives_the_template_line(tmp_path):
    with pytest.raises(TemplateError) as e:
        _compiled(tmp_path, "Does it follow that {{ hypothesis }}", "Does it follow that {{ hypothesis }")
    path = tmp_path / "rte.yaml"
    msg = str(e.value)
    assert msg.startswith(f"{path}:{_line_of(path, 'Does it follow')}: templates[1].input: Jinja2 syntax error")
    assert "template line 2" in msg


def test_expression_field_checks_order(tmp_path):
    with pytest.raises(TemplateError, match=r"fields.premise.expr: uses undeclared variable 'hypothesis'"):
        _compiled(tmp_path, "premise: {feature: premise}", "premise: {expr: hypothesis}")


@pytest.mark.parametrize("attack", [
    "{{ ''.__class__.__mro__ }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ premise.__class__.__base__.__subclasses__() }}",
    "{{ self.__init__.__globals__ }}",
    "{{ range.__self__ }}",
])
def test_sandbox_refuses_escapes(tmp_path, attack):
    compiled = None
    try:
        compiled = _compiled(tmp_path, '"{{ answer }}"', f'"{attack}"')
    except TemplateError as e:  # refused statically: the object is not even reachable
        assert "undeclared variable" in str(e) or "is not allowed (names starting with '_' are internal)" in str(e)
        return
    values = compiled.fields_of(FEATURES)
    with pytest.raises(TemplateError) as e:
        compiled.render(values, 0)
    assert "sandbox" in str(e.value) or "undefined" in str(e.value)


def test_sandbox_has_no_dangerous_globals():
    env = make_env()
    assert not {"cycler", "joiner", "namespace", "lipsum"} & set(env.globals)
    with pytest.raises(Exception):
        env.from_string("{{ ''.__class__.__mro__ }}").render()


def test_template_count_turned_and_duplicates(tmp_path):
    text = RTE.read_text()
    first = text.index("  - input:")
    assert len(_compiled(tmp_path, text[first:text.index("  - input:", first + 1)], "").templates) == 9
    with pytest.raises(TemplateError, match=r"templates: expected 1 to 10 templates, found 11"):
        last = text[text.rindex("  - input:"):]
        _compiled(tmp_path, last, last + "  - {input: 'One more: {{ premise }}', target: '{{ answer }}'}\n")
    with pytest.raises(TemplateError, match=r"templates\[1\]: identical to templates\[0\]"):
        _compiled(tmp_path, "Read this: {{ premise }}\n      Does it follow that {{ hypothesis }}",
                  '{{ premise }}\n\n      Based on the passage above, is it true that "{{ hypothesis }}"?')
    many = text.replace('    target: "{{ answer }}"\n  - input: |-\n      Given', '    target: "{{ answer }}"\n'
                        '    turned: true\n  - input: |-\n      Given').replace(
        '    target: "{{ answer }}"\n  - input: |-\n      Here', '    target: "{{ answer }}"\n'
        '    turned: true\n  - input: |-\n      Here')
    with pytest.raises(TemplateError, match=r"at most 3 templates may be turned, found 4"):
        _compiled(tmp_path, text, many)


def test_options_suffix_default_and_custom():
    assert options_suffix(["yes", "no"]) == "\n\nOPTIONS:\n- yes\n- no"
    fmt = OptionsFormat(header="\nChoices:", item=" [{option}]")
    assert options_suffix(["a", "b"], fmt) == "\nChoices: [a] [b]"


def test_option_styles_letters_romans_and_numbers():
    fmt = OptionsFormat(header=["\n\nOPTIONS:", "\n\nPick from:"],
                        item=["\n- {option}", "\n({letter}) {option}", "\n{roman}. {option}", " {number}) {option}"])
    options = ["yes", "no", "maybe"]
    assert options_suffix(options, fmt) == "\n\nOPTIONS:\n- yes\n- no\n- maybe"  # the first style by default
    assert options_suffix(options, fmt, (1, 1)) == "\n\nPick from:\n(A) yes\n(B) no\n(C) maybe"
    assert options_suffix(options, fmt, (0, 2)) == "\n\nOPTIONS:\ni. yes\nii. no\niii. maybe"
    assert options_suffix(options, fmt, (1, 3)) == "\n\nPick from: 1) yes 2) no 3) maybe"
    assert [letter(i) for i in (0, 1, 25, 26, 27, 701, 702)] == ["A", "B", "Z", "AA", "AB", "ZZ", "AAA"]
    assert [roman(n) for n in (1, 4, 9, 14, 40, 90, 1994)] == ["i", "iv", "ix", "xiv", "xl", "xc", "mcmxciv"]
    assert option_item("({letter}) {option}", 0, "say {letter}") == "(A) say {letter}"  # option text kept as is


def test_noopt_render_leaves_the_suffix_out_but_keeps_the_options(tmp_path):
    compiled = _compiled(tmp_path)
    values = compiled.fields_of(FEATURES)
    with_suffix, without = compiled.render(values, 2), compiled.render(values, 2, with_options=False)
    assert with_suffix.inputs == without.inputs + "\n\nOPTIONS:\n- yes\n- no"
    assert without.options == ("yes", "no") and without.targets == "yes"


def test_natural_mode_appends_options_to_classification(tmp_path):
    compiled = _compiled(tmp_path)
    values = compiled.fields_of(FEATURES)
    r = compiled.render(values, 2)
    assert r.inputs.endswith("Is the hypothesis entailed by the premise?\n\nOPTIONS:\n- yes\n- no")
    assert r.inputs.startswith("Premise: The museum opened in 1901.")
    assert (r.targets, r.options, r.template, r.turned) == ("yes", ("yes", "no"), 2, False)


def test_turned_template_is_generation(tmp_path):
    compiled = _compiled(tmp_path)
    r = compiled.render(compiled.fields_of({**FEATURES, "label": 1}), 9)
    assert r.turned and r.options == () and "OPTIONS" not in r.inputs
    assert "does not support" in r.inputs and r.targets == "The museum is old."


def test_dataset_name_and_no_template_modes(tmp_path):
    compiled = _compiled(tmp_path)
    values = compiled.fields_of(FEATURES)
    named = compiled.render(values, 3, mode="dataset_name")
    assert named.inputs == ("[Natural language inference: RTE] The museum opened in 1901.\nThe museum is old."
                            "\n\nOPTIONS:\n- yes\n- no")
    assert (named.targets, named.template) == ("yes", -1)
    bare = compiled.render(values, 3, mode="none")
    assert bare.inputs == "The museum opened in 1901.\nThe museum is old.\n\nOPTIONS:\n- yes\n- no"
    assert bare.targets == "yes"


def test_answer_out_of_range_and_missing_feature(tmp_path):
    compiled = _compiled(tmp_path)
    with pytest.raises(TemplateError, match=r"answer: evaluated to -1, expected an option index in 0..1"):
        compiled.fields_of({**FEATURES, "label": -1})
    with pytest.raises(TemplateError, match=r"fields.hypothesis: feature 'hypothesis' not found.*did you mean"):
        compiled.fields_of({"premise": "p", "hypothesiss": "h", "label": 0})


def test_substitution_templates_render_exactly_as_jinja_does():
    from flanpipe.collection import load_collection
    from flanpipe.sources import read_samples
    from flanpipe.templates import Substitution

    env = make_env()
    collection = load_collection()
    fast = 0
    for name, spec in collection.datasets.items():
        compiled = collection.compiled(name)
        split = "train" if "train" in spec.source.splits else "test"
        for _, features in list(read_samples(spec, split))[:3]:
            values = compiled.fields_of(features)
            if values is None:
                continue
            scope = {**env.globals, **values}
            for t in spec.templates:
                for source in (t.input, t.target):
                    sub = Substitution.of(source, env)
                    if sub is not None:
                        fast += 1
                        assert sub.render(scope) == env.from_string(source).render(**values)
    assert fast > 1000
    assert Substitution.of("{{ a | upper }}", env) is None and Substitution.of("{% if a %}x{% endif %}", env) is None
