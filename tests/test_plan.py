"""Plans of the bundled pipelines: held-out splits, exclusions, ablation dataset sets, mixing."""

from __future__ import annotations

from pathlib import Path

import pytest

from flanpipe.collection import load_collection
from flanpipe.mixing import allocate, mixing_rates
from flanpipe.plan import load_plan

PIPELINES = Path(__file__).resolve().parent.parent / "pipelines"


@pytest.fixture(scope="module")
def collection():
    return load_collection()


def _clusters(plan, datasets):
    return {plan.collection.datasets[d].cluster for d in datasets}


def test_flan2021_exclusions_follow_the_taxonomy_rule():
    plan = load_plan(PIPELINES / "flan2021.yaml")
    removed = {s.name: set(s.removed) for s in plan.splits}
    assert removed["natural_language_inference"] == {"natural_language_inference", "paraphrase"}
    assert removed["paraphrase"] == {"paraphrase", "natural_language_inference"}
    assert removed["reading_comprehension"] == {"reading_comprehension", "reading_comprehension_with_commonsense"}
    assert removed["commonsense"] == {"commonsense", "reading_comprehension_with_commonsense"}
    for name in ("closed_book_qa", "translation", "coreference", "struct_to_text", "sentiment", "misc"):
        assert removed[name] == {name}
    for s in plan.splits:
        assert not _clusters(plan, s.train) & set(s.removed)
        assert _clusters(plan, s.eval) == {s.name}
    coref = plan.split("coreference")
    assert "wsc273" in coref.eval and "wsc273" not in {d for s in plan.splits for d in s.train}


def test_rates_are_examples_proportional_with_the_maximum():
    rates = mixing_rates({"big": 30_000, "mid": 3_000, "small": 1_000}, 3_000)
    assert rates == {"big": 3 / 7, "mid": 3 / 7, "small": 1 / 7}
    assert sum(allocate(rates, 1001).values()) == 1001


@pytest.mark.parametrize("k", range(1, 8))
def test_cluster_count_ablation(k):
    plan = load_plan(PIPELINES / f"clusters_{k}.yaml")
    order = ["summarization", "translation", "misc", "reading_comprehension", "sentiment", "struct_to_text",
             "coreference"]
    (split,) = plan.splits
    assert split.name == "natural_language_inference+closed_book_qa+commonsense"
    assert _clusters(plan, split.train) == set(order[:k])
    assert _clusters(plan, split.eval) == {"natural_language_inference", "closed_book_qa", "commonsense"}
    assert {"paraphrase", "reading_comprehension_with_commonsense"} <= set(split.removed)


def test_instruction_ablations_and_fewshot_and_prompt_tuning():
    no_t = load_plan(PIPELINES / "no_template.yaml").pipeline
    assert (no_t.instructions, no_t.eval_instructions) == ("none", "natural")
    name = load_plan(PIPELINES / "dataset_name.yaml").pipeline
    assert (name.instructions, name.eval_instructions) == ("dataset_name", "natural")
    assert load_plan(PIPELINES / "dataset_name_eval.yaml").pipeline.eval_instructions == "dataset_name"
    few = load_plan(PIPELINES / "fewshot.yaml").pipeline.fewshot
    assert (few.max_exemplars, few.max_tokens) == (16, 960)
    pt = load_plan(PIPELINES / "prompt_tuning.yaml")
    superglue = {"bool_q", "cb", "copa", "multirc", "record", "rte", "wic", "wsc"}
    for task in superglue:
        cluster = pt.collection.datasets[task].cluster
        split = pt.split(cluster)
        assert task in split.eval and not _clusters(pt, split.train) & {cluster}


def test_modes_render_as_the_paper_describes(collection):
    from flanpipe.preview import render_samples

    natural = render_samples("wmt14_enfr", n=1, mode="natural", collection=collection)[0].rendered
    named = render_samples("wmt14_enfr", n=1, mode="dataset_name", collection=collection)[0].rendered
    bare = render_samples("wmt14_enfr", n=1, mode="none", collection=collection)[0].rendered
    assert named.inputs.startswith(f"[Translation: {collection.datasets['wmt14_enfr'].title}] ")
    assert named.inputs.endswith(bare.inputs) and bare.targets == named.targets
    assert len(natural.inputs) > len(bare.inputs) and natural.template >= 0 and bare.template == -1


# ---------------------------------------------------------------------------- paths
def test_an_extends_chain_from_another_directory_resolves_each_path_against_its_own_file(tmp_path):
    other = tmp_path / "elsewhere" / "deeper"
    other.mkdir(parents=True)
    (other / "mine.yaml").write_text(f"extends: {PIPELINES / 'flan2021.yaml'}\nname: mine\n")
    plan = load_plan(other / "mine.yaml")
    repo = PIPELINES.parent
    assert plan.tokenizer == (repo / "flanpipe" / "assets" / "flanpipe_sp8k.model").resolve()
    assert plan.tokenizer.exists()
    assert plan.source.dir == str((repo / "templates" / "samples").resolve())
    # the child's own paths are its own: relative to the child's directory
    (other / "samples").mkdir()
    (other / "tok.model").write_bytes(b"")
    (other / "mine.yaml").write_text(f"extends: {PIPELINES / 'flan2021.yaml'}\nname: mine\ntokenizer: tok.model\n"
                                     f"source: {{kind: tfds, data_dir: ../data}}\n")
    from flanpipe.plan import check_pipeline, resolve_path

    pipeline, located, _ = check_pipeline(other / "mine.yaml")
    assert resolve_path(pipeline.tokenizer, located, ("tokenizer",)) == str(other / "tok.model")
    assert resolve_path(pipeline.source.data_dir, located, ("source", "data_dir")) == str(tmp_path / "elsewhere" / "data")
    assert pipeline.tokenizer == "tok.model"  # the declared pipeline keeps its paths: its hash does not depend on where


def test_templates_dir_means_its_own_samples(tmp_path):
    import shutil

    from compile_fixtures import make_world

    make_world(tmp_path)
    shutil.move(str(tmp_path / "samples"), str(tmp_path / "templates" / "samples"))
    pipe = tmp_path / "pipeline.yaml"
    pipe.write_text(pipe.read_text().replace(f"source: {{kind: samples, dir: {tmp_path / 'samples'}}}",
                                             "source: {kind: samples}"))
    plan = load_plan(pipe, templates=tmp_path / "templates")
    assert plan.source.dir == str((tmp_path / "templates" / "samples").resolve())
    assert plan.counts == {"para": 40, "rte": 40, "senti": 40}


def test_an_inherited_relative_path_is_resolved_against_the_parent_that_declares_it(tmp_path):
    import shutil

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    shutil.copy(PIPELINES.parent / "flanpipe" / "assets" / "flanpipe_sp8k.model", tmp_path / "a" / "tok.model")
    (tmp_path / "a" / "base.yaml").write_text("extends: flanpipe:pipelines/flan2021.yaml\nname: base\n"
                                              "tokenizer: tok.model\n")
    (tmp_path / "b" / "child.yaml").write_text("extends: ../a/base.yaml\nname: child\n")
    plan = load_plan(tmp_path / "b" / "child.yaml")
    assert plan.tokenizer == tmp_path / "a" / "tok.model"
    assert plan.pipeline.name == "child" and len(plan.splits) == 10


# ------------------------------------------------------------------ the opt-in chain-of-thought cluster
COT = {"esnli", "gsm8k", "qasc"}


def _cot_pipeline(tmp_path, body: str):
    path = tmp_path / "cot.yaml"
    path.write_text(f"extends: {PIPELINES / 'flan2021.yaml'}\nname: cot\n{body}")
    return path


def test_flan2021_plans_no_opt_in_cluster():
    plan = load_plan(PIPELINES / "flan2021.yaml")
    assert not COT & set(plan.datasets) and not COT & set(plan.counts)  # a TFDS data_dir without them still plans
    assert all("chain_of_thought" not in s.removed for s in plan.splits)


def test_naming_chain_of_thought_trains_it_except_where_nli_is_held_out(tmp_path, collection):
    clusters = collection.taxonomy.default_clusters() + ["chain_of_thought"]
    plan = load_plan(_cot_pipeline(tmp_path, f"clusters: {clusters}\n"
                                             "held_out: [natural_language_inference, closed_book_qa]\n"))
    nli, cbqa = plan.split("natural_language_inference"), plan.split("closed_book_qa")
    assert set(nli.removed) == {"natural_language_inference", "paraphrase", "chain_of_thought"}  # esnli is SNLI
    assert not COT & set(nli.train)
    assert COT <= set(cbqa.train) and cbqa.removed == ("closed_book_qa",)
    assert all(cbqa.rates[d] > 0 for d in COT)


def test_holding_chain_of_thought_out_evaluates_it_and_removes_nli(tmp_path):
    plan = load_plan(_cot_pipeline(tmp_path, "held_out: [chain_of_thought, sentiment]\n"))
    cot, senti = plan.split("chain_of_thought"), plan.split("sentiment")
    assert set(cot.eval) == COT and set(cot.removed) == {"chain_of_thought", "natural_language_inference"}
    assert not COT & set(cot.train) and not {"snli", "anli_r1"} & set(cot.train)
    assert not COT & set(senti.train)  # held out somewhere, but trained only when listed in clusters:


def test_only_the_cot_cluster(tmp_path):
    plan = load_plan(_cot_pipeline(tmp_path, "clusters: [chain_of_thought]\nheld_out: [sentiment]\n"))
    assert set(plan.split("sentiment").train) == COT
    assert set(plan.counts) == COT  # on TFDS, only the datasets it trains on must be prepared before it plans


def test_a_dataset_of_an_opt_in_cluster_must_be_named_by_its_cluster(tmp_path):
    from flanpipe.errors import SpecError

    with pytest.raises(SpecError, match=r"cot.yaml:3: datasets\[1\]: dataset 'gsm8k' is in the opt-in cluster "
                                        r"'chain_of_thought'.*add 'chain_of_thought' to clusters:"):
        load_plan(_cot_pipeline(tmp_path, "datasets: [rte, gsm8k]\n"))
