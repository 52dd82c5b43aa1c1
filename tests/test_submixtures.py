"""Sub-mixtures (mixture_of): shares, held-out consistency, errors, determinism, plan output."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from compile_fixtures import compile_world, make_world
from conftest import TINY_TAXONOMY, generation_yaml, write
from typer.testing import CliRunner

from flanpipe.audit import audit_output
from flanpipe.cli import app
from flanpipe.errors import SpecError
from flanpipe.plan import load_plan
from flanpipe.verify import verify_output

# The tiny taxonomy with a second sentiment dataset and a summarization cluster.
TAXONOMY = TINY_TAXONOMY.replace("datasets: [senti]", "datasets: [senti, senti2]") + """\
  summarization:
    title: Summarization
    datasets: [summ]
"""
# sentiment has a dataset in each part: holding it out must remove both
PART_A = "name: part_a\ndatasets: [rte, para, senti]\nturned_weight: 0.2\n"
PART_B = "name: part_b\ndatasets: [senti2, summ]\nmixing: {cap: 25, maximum_rate: 20}\nturned_weight: 0.5\n"
MIXTURE = "mixture_of:\n  - {pipeline: parts/a.yaml, weight: 0.7}\n  - {pipeline: parts/b.yaml, weight: 0.3}\n"


def make_mixture_world(root: Path) -> Path:
    pipeline = make_world(root, train=60)
    for name, cluster in (("senti2", "sentiment"), ("summ", "summarization")):
        write(root / "templates" / cluster / f"{name}.yaml", generation_yaml(name, cluster))
        shutil.copytree(root / "samples" / "senti", root / "samples" / name)
    write(root / "templates" / "taxonomy.yaml", TAXONOMY)
    write(root / "parts" / "a.yaml", PART_A)
    write(root / "parts" / "b.yaml", PART_B)
    text = pipeline.read_text().replace("mixture_size: {examples: 100}", "mixture_size: {examples: 400}")
    return write(pipeline, text + MIXTURE)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mixture")
    make_mixture_world(root)
    compile_world(root, "out")
    return root


def _split(out: Path, name: str) -> dict:
    return json.loads((out / name / "manifest.json").read_text())


def test_sub_mixture_shares_are_their_weights_and_recorded(world):
    m = _split(world / "out", "natural_language_inference")  # rte and para removed: part_a keeps senti
    subs = m["submixtures"]
    assert subs["part_a"]["datasets"] == ["senti"] and subs["part_b"]["datasets"] == ["senti2", "summ"]
    for name, weight in (("part_a", 0.7), ("part_b", 0.3)):
        assert subs[name]["planned_share"] == pytest.approx(weight)
        assert abs(subs[name]["realized_share"] - weight) < 0.01
        assert subs[name]["weight"] == weight
    assert subs["part_b"]["cap"] == 25 and subs["part_b"]["maximum_rate"] == 20
    # part_b's cap holds its datasets to 25 kept examples; part_a's (the outer 30,000) keeps all 60
    assert m["train_examples_available"] == {"senti": 60, "senti2": 25, "summ": 25}
    assert sum(m["counts"]["datasets"].values()) == m["summary"]["examples"] == 400
    top = json.loads((world / "out" / "manifest.json").read_text())
    assert top["submixtures"]["part_b"]["resolved"]["turned_weight"] == 0.5
    assert top["submixtures"]["part_a"]["file"] == "a.yaml"


def test_a_held_out_cluster_is_removed_from_every_sub_mixture(world):
    m = _split(world / "out", "sentiment")
    assert m["submixtures"]["part_a"]["datasets"] == ["rte", "para"]
    assert m["submixtures"]["part_b"]["datasets"] == ["summ"]
    seen = set()
    for path in (world / "out" / "sentiment" / "examples").glob("*.parquet"):
        seen |= set(pq.read_table(path, columns=["dataset"]).column("dataset").to_pylist())
    assert seen == {"rte", "para", "summ"}
    assert set(m["eval"]) == {"senti", "senti2"}  # evaluated with their own part's settings
    assert verify_output(world / "out") == []
    audit = audit_output(world / "out")
    assert all(s["leakage"]["ok"] for s in audit["splits"].values())


def test_turned_uses_have_their_sub_mixtures_weight(world):
    rows = pq.read_table(world / "out" / "sentiment" / "examples", columns=["dataset", "turned"]).to_pylist()
    turned = [r["turned"] for r in rows if r["dataset"] == "rte"]
    expected = 2 * 0.2 / (2 * 0.2 + 8)  # rte: 2 of its 10 templates are turned; 0.2 of their weight at 1
    assert len(turned) > 100 and abs(sum(turned) / len(turned) - expected) < 0.03


def test_each_dataset_renders_with_its_own_sub_mixtures_settings(world):
    plan = load_plan(world / "pipeline.yaml", templates=world / "templates")
    assert plan.pipeline_of("summ").turned_weight == 0.5 and plan.pipeline_of("summ").mixing.cap == 25
    assert plan.pipeline_of("rte").turned_weight == 0.2 and plan.pipeline_of("rte").mixing.cap == 30000
    assert plan.pipeline_of("rte").seed == plan.pipeline.seed  # outer settings reach every part


def test_compiles_are_byte_identical_twice_and_on_two_workers(world, tmp_path):
    files = json.loads((world / "out" / "manifest.json").read_text())["files"]
    compile_world(world, "again", cache_dir=str(tmp_path / "cache-1"))
    assert json.loads((world / "again" / "manifest.json").read_text())["files"] == files
    compile_world(world, "mp", workers=2, mode="multi_processing", cache_dir=str(tmp_path / "cache-2"))
    assert json.loads((world / "mp" / "manifest.json").read_text())["files"] == files


def test_plan_shows_sub_mixtures_weights_and_shares(world):
    result = CliRunner().invoke(app, ["plan", str(world / "pipeline.yaml"), "--templates", str(world / "templates")],
                                env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if "part_" in line]
    assert len(lines) == 4  # two splits x two parts
    row = next(line for line in lines if "sentiment" in line and "part_b" in line)
    assert "b.yaml" in row and "0.3" in row and "30.0%" in row and "25" in row and "20" in row


@pytest.mark.parametrize("part_b, where, message", [
    ("name: part_b\nseed: 3\ndatasets: [summ]\n", "b.yaml:2: seed", "set by the outer pipeline"),
    ("name: part_b\ndatasets: [summ, para]\n", "pipeline.yaml", "dataset 'para' is in sub-mixtures 'part_a' and"),
    ("name: part_b\nmixture_of: [{pipeline: a.yaml, weight: 1}]\n", "b.yaml:2: mixture_of", "one level"),
    ("name: part_b\ndatasets: [sum]\n", "b.yaml:2: datasets[0]", "unknown dataset 'sum'"),
    ("name: part_a\ndatasets: [summ]\n", "pipeline.yaml", "two sub-mixtures are named 'part_a'"),
    ("name: part_b\ndatasets: [summ]\nmixing: {cap: 0}\n", "b.yaml:3: mixing.cap", "greater than 0"),
])
def test_a_sub_pipeline_that_sets_what_it_may_not_is_an_error(tmp_path, part_b, where, message):
    make_mixture_world(tmp_path)
    write(tmp_path / "parts" / "b.yaml", part_b)
    with pytest.raises(SpecError) as e:
        load_plan(tmp_path / "pipeline.yaml", templates=tmp_path / "templates", require_data=False)
    assert where in str(e.value) and message in str(e.value)


def test_the_outer_pipeline_of_a_mixture_selects_no_datasets_itself(tmp_path):
    pipeline = make_mixture_world(tmp_path)
    write(pipeline, pipeline.read_text() + "datasets: [rte]\n")
    with pytest.raises(SpecError, match="each sub-pipeline sets its own datasets"):
        load_plan(pipeline, templates=tmp_path / "templates", require_data=False)
    write(pipeline, pipeline.read_text().replace("parts/b.yaml", "parts/nope.yaml").replace("datasets: [rte]\n", ""))
    with pytest.raises(SpecError, match=r"mixture_of\[1\].pipeline: no such pipeline file 'parts/nope.yaml'"):
        load_plan(pipeline, templates=tmp_path / "templates", require_data=False)


def test_the_shipped_example_plans_its_two_parts_at_their_weights():
    example = Path(__file__).resolve().parent.parent / "pipelines" / "examples" / "two_parts.yaml"
    plan = load_plan(example, require_data=False)
    assert [(s.name, s.weight) for s in plan.submixtures] == [("main", 0.7), ("rest", 0.3)]
    assert plan.pipeline.decontaminate is not None and plan.pipeline_of("wmt16_translate_deen").turned_weight == 0.3
    for split in plan.splits:
        assert [g.name for g in split.submixtures] == ["main", "rest"]
        allocated = sum(split.allocation.values())
        rest = sum(split.allocation.get(d, 0) for d in split.submixtures[1].train)
        assert abs(rest / allocated - 0.3) < 0.001
