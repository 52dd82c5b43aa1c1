"""Spec loading: every failure names file:line and the field path, with did-you-mean."""

from __future__ import annotations

from pathlib import Path

import pytest

from flanpipe.collection import load_collection
from flanpipe.errors import SpecError
from flanpipe.plan import load_plan
from flanpipe.spec import json_schemas, load_dataset_file, load_pipeline, write_schemas

from conftest import PIPE, RTE, write


def _rte_with(tmp_path: Path, old: str, new: str) -> Path:
    text = RTE.read_text()
    assert old in text
    path = tmp_path / "rte.yaml"
    path.write_text(text.replace(old, new, 1))
    return path


def _line_of(path: Path, needle: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if needle in line)


def test_unknown_key_names_file_line_field_and_suggests(tmp_path):
    path = _rte_with(tmp_path, "kind: classification", "kind: classification\nclustr: oops")
    with pytest.raises(SpecError) as e:
        load_dataset_file(path)
    assert str(e.value).startswith(f"{path}:{_line_of(path, 'clustr')}: clustr: unknown key")
    assert "did you mean 'cluster'" in str(e.value)


def test_unknown_nested_key_suggests_sibling(tmp_path):
    path = _rte_with(tmp_path, "  key: idx", "  kee: idx")
    with pytest.raises(SpecError) as e:
        load_dataset_file(path)
    assert f":{_line_of(path, 'kee:')}: source.kee: unknown key" in str(e.value)
    assert "'key'" in str(e.value)


def test_missing_field(tmp_path):
    path = _rte_with(tmp_path, "title: RTE\n", "")
    with pytest.raises(SpecError) as e:
        load_dataset_file(path)
    assert str(e.value) == f"{path}:{_line_of(path, 'name: rte')}: title: required field is missing"


def test_wrong_type_names_the_template_line(tmp_path):
    path = _rte_with(tmp_path, "    turned: true", "    turned: maybe")
    with pytest.raises(SpecError) as e:
        load_dataset_file(path)
    msg = str(e.value)
    assert f"{path}:{_line_of(path, 'turned: maybe')}: templates[8].turned:" in msg
    assert "valid boolean" in msg and "'maybe'" in msg


def test_invalid_yaml_names_the_line(tmp_path):
    path = write(tmp_path / "bad.yaml", "name: x\nfields: [a, b\nkind: y\n")
    with pytest.raises(SpecError) as e:
        load_dataset_file(path)
    assert str(e.value).startswith(f"{path}:") and "invalid YAML" in str(e.value)


def test_name_must_match_file(tmp_path):
    path = _rte_with(tmp_path, "name: rte", "name: rtee")
    with pytest.raises(SpecError, match=r"rte.yaml:\d+: name: must equal the file name 'rte', got 'rtee'"):
        load_dataset_file(path)


def test_unknown_dataset_in_taxonomy(tiny_templates):
    tax = tiny_templates / "taxonomy.yaml"
    tax.write_text(tax.read_text().replace("datasets: [senti]", "datasets: [sentii]"))
    with pytest.raises(SpecError) as e:
        load_collection(tiny_templates)
    assert str(e.value) == (f"{tax}:{_line_of(tax, 'sentii')}: clusters.sentiment.datasets[0]: "
                            "unknown dataset 'sentii' (did you mean 'senti'?)")


def test_validate_collects_every_problem(tiny_templates):
    tax = tiny_templates / "taxonomy.yaml"
    tax.write_text(tax.read_text().replace("datasets: [senti]", "datasets: [sentii]")
                   .replace("also_remove: [paraphrase]", "also_remove: [paraphrasee]"))
    problems: list = []
    load_collection(tiny_templates, errors=problems)
    text = "\n".join(map(str, problems))
    assert "unknown dataset 'sentii'" in text
    assert "unknown cluster 'paraphrasee' (did you mean 'paraphrase'?)" in text
    assert "'senti' is not listed in any cluster" in text




def test_extends_overrides_deeply_and_keeps_lines(tmp_path):
    write(tmp_path / "base.yaml", PIPE)
    child = write(tmp_path / "child.yaml", "extends: base.yaml\nname: child\nlengths: {targets: 8}\n"
                                           "mixture_size: {steps: 10, batch_tokens: 80}\n")
    spec, located = load_pipeline(child)
    assert spec.name == "child" and spec.seed == 1
    assert (spec.lengths.inputs, spec.lengths.targets) == (64, 8)
    assert spec.mixture_size.steps == 10  # a variant key is replaced whole, not merged
    assert located.where(("lengths", "targets")) == (child, 3)
    assert located.where(("seed",))[0] == tmp_path / "base.yaml"


def test_extends_error_points_at_parent_file(tmp_path):
    base = write(tmp_path / "base.yaml", PIPE.replace("seed: 1", "seed: one"))
    child = write(tmp_path / "child.yaml", "extends: base.yaml\nname: child\n")
    with pytest.raises(SpecError) as e:
        load_pipeline(child)
    assert str(e.value).startswith(f"{base}:2: seed:")


def test_extends_missing_and_circular(tmp_path):
    a = write(tmp_path / "a.yaml", "extends: b.yaml\n")
    write(tmp_path / "b.yaml", "extends: a.yaml\n")
    with pytest.raises(SpecError, match="circular extends"):
        load_pipeline(a)
    c = write(tmp_path / "c.yaml", "extends: nope.yaml\n")
    with pytest.raises(SpecError, match=r"c.yaml:1: extends: no such pipeline file 'nope.yaml'"):
        load_pipeline(c)


def test_unknown_cluster_in_pipeline(tmp_path, tiny_templates):
    path = write(tmp_path / "p.yaml", PIPE.replace("held_out: [natural_language_inference]",
                                                   "held_out:\n  - natural_language_inferenc"))
    with pytest.raises(SpecError) as e:
        load_plan(path, templates=tiny_templates)
    assert str(e.value) == (f"{path}:{_line_of(path, 'natural_language_inferenc')}: held_out[0]: unknown cluster "
                            "'natural_language_inferenc' (did you mean 'natural_language_inference'?)")


def test_non_positive_length_is_refused(tmp_path):
    path = write(tmp_path / "p.yaml", PIPE.replace("inputs: 64", "inputs: 0"))
    with pytest.raises(SpecError, match=r"p.yaml:6: lengths.inputs: Input should be greater than 0, got 0"):
        load_pipeline(path)


FEWSHOT = ("fewshot: {max_exemplars: 10, max_tokens: 1920, input_target_separator: \"\\n\", "
           "exemplar_separator: \"\\n\\n\"}\n")


@pytest.mark.parametrize("extra,message", [
    ("formats: {zsopt: 0.5, zsnoopt: 0.4}\n", "formats: shares must sum to 1, got 0.9"),
    ("formats: {zsopt: 1.0, zsnoopt: 0}\n", "formats: zsnoopt: a share must be > 0, got 0.0"),
    ("formats: {zsopt: 0.5, fsopt: 0.5}\n",
     "formats: fsopt is few-shot: it needs a 'fewshot:' block (separators, max_tokens)"),
    ("formats: {}\n", "formats: give at least one format with its share, or omit 'formats'"),
    ("formats: {zsopt: 0.5, fsnopt: 0.5}\n" + FEWSHOT,
     "formats.fsnopt: Input should be 'zsopt', 'fsopt', 'zsnoopt' or 'fsnoopt', got 'fsnopt'"),
    (FEWSHOT.replace("max_exemplars: 10", "max_exemplars: 10, exemplar_counts: [1, 12]"),
     "fewshot: exemplar_counts: 12 is outside 1..max_exemplars (10)"),
    (FEWSHOT.replace("max_exemplars: 10", "max_exemplars: 10, exemplar_counts: []"),
     "fewshot: exemplar_counts: the list is empty; give at least one count or omit it"),
])
def test_format_settings_errors_are_one_line_with_file_line_and_field(tmp_path, extra, message):
    path = write(tmp_path / "p.yaml", PIPE + extra)
    with pytest.raises(SpecError) as e:
        load_pipeline(path)
    line = _line_of(path, message.split(":")[0].split(".")[0] + ":")  # the line of the key at fault
    assert str(e.value) == f"{path}:{line}: {message}" and "\n" not in str(e.value)


@pytest.mark.parametrize("options,message", [
    ('{header: ["\\n\\nOPTIONS:", "\\n\\nChoices:"], item: ["\\n({letter})"]}',
     "options_format: item '\\n({letter})' must contain '{option}' exactly once"),
    ('{header: [], item: "\\n- {option}"}', "options_format: header: the list is empty; give at least one"),
    ('{header: [a, a], item: "\\n- {option}"}', "options_format: header: lists a style twice"),
])
def test_option_style_errors_name_the_field(tmp_path, options, message):
    text = PIPE.replace('options_format: {header: "\\n\\nOPTIONS:", item: "\\n- {option}"}',
                        f"options_format: {options}")
    assert text != PIPE
    path = write(tmp_path / "p.yaml", text)
    with pytest.raises(SpecError) as e:
        load_pipeline(path)
    assert str(e.value) == f"{path}:{_line_of(path, 'options_format')}: {message}"


def test_single_and_listed_option_styles_and_formats_load(tmp_path):
    spec, _ = load_pipeline(write(tmp_path / "p.yaml", PIPE))
    assert spec.options_format.headers == ("\n\nOPTIONS:",) and not spec.options_format.varied
    assert spec.formats is None and spec.fewshot is None
    listed = PIPE.replace('options_format: {header: "\\n\\nOPTIONS:", item: "\\n- {option}"}',
                          'options_format: {header: ["\\n\\nOPTIONS:", "\\n\\nChoices:"], item: "\\n- {option}"}')
    spec, _ = load_pipeline(write(tmp_path / "q.yaml", listed + FEWSHOT +
                                  "formats: {zsopt: 0.25, fsopt: 0.25, zsnoopt: 0.25, fsnoopt: 0.25}\n"))
    assert spec.options_format.varied and spec.options_format.items == ("\n- {option}",)
    assert spec.formats == {"zsopt": 0.25, "fsopt": 0.25, "zsnoopt": 0.25, "fsnoopt": 0.25}
    # a child's formats replace the parent's whole (a merge would sum the shares of both)
    child = write(tmp_path / "child.yaml", "extends: q.yaml\nname: child\nformats: {zsopt: 1}\n")
    assert load_pipeline(child)[0].formats == {"zsopt": 1.0}


def test_json_schemas_cover_the_three_kinds(tmp_path):
    schemas = json_schemas()
    assert set(schemas) == {"dataset", "taxonomy", "pipeline"}
    assert schemas["dataset"]["additionalProperties"] is False
    assert "templates" in schemas["dataset"]["properties"]
    written = write_schemas(tmp_path)
    assert sorted(p.name for p in written) == ["dataset.schema.json", "pipeline.schema.json", "taxonomy.schema.json"]


def test_committed_schemas_are_current(tmp_path):
    write_schemas(tmp_path)
    committed = Path(__file__).resolve().parent.parent / "docs" / "schemas"
    for path in tmp_path.iterdir():
        assert (committed / path.name).read_text() == path.read_text(), f"run `flanpipe schema` ({path.name})"


@pytest.mark.parametrize("old,new,suggestion", [
    ("premise: {feature: premise}", "premise: {featur: premise}", "'feature'"),
    ("options: {fixed: [\"yes\", \"no\"]}", "options: {fixd: [\"yes\", \"no\"]}", "'fixed'"),
    ("    target: \"{{ answer }}\"\n", "    targt: \"{{ answer }}\"\n", "'target'"),
])
def test_did_you_mean_inside_unions_lists_and_maps(tmp_path, old, new, suggestion):
    path = _rte_with(tmp_path, old, new)
    with pytest.raises(SpecError) as e:
        load_dataset_file(path)
    assert "unknown key" in str(e.value) and f"did you mean {suggestion}" in str(e.value)


def test_did_you_mean_in_pipeline_variants(tmp_path):
    path = write(tmp_path / "p.yaml", PIPE.replace("source: {kind: samples}", "source: {kind: tfds, data_dri: /x}"))
    with pytest.raises(SpecError) as e:
        load_pipeline(path)
    assert str(e.value) == f"{path}:3: source.data_dri: unknown key (did you mean 'data_dir'?)"


def test_the_documented_prompt_formats_example_loads(tmp_path):
    doc = (Path(__file__).resolve().parent.parent / "docs" / "dataset-format.md").read_text()
    block = doc.split("# my_formats.yaml", 1)[1].split("```", 1)[0]
    spec, _ = load_pipeline(write(tmp_path / "my_formats.yaml", block.split("\n", 1)[1]))
    assert spec.formats == {"zsopt": 0.25, "fsopt": 0.25, "zsnoopt": 0.25, "fsnoopt": 0.25}
    assert spec.fewshot.exemplar_counts == [1, 2, 5, 10] and spec.options_format.items[1] == "\n({letter}) {option}"
