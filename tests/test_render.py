"""Render stage: variants take the next template, tokens keep only what a row holds, each chunk renders once."""

from __future__ import annotations

import os

import numpy as np
import pytest

from flanpipe import read
from flanpipe.render import render_train, render_unit, templates_of, token_lists
from flanpipe.store import stats_path

from compile_fixtures import make_world, world_jobs


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("render")
    make_world(root, train=60)
    return root


def test_templates_start_by_hash_or_round_robin_and_repeats_take_the_next(world):
    _, jobs, _ = world_jobs(world)
    settings = jobs["senti"].settings
    index, hashes = np.arange(20), np.arange(20, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    first = templates_of(index, hashes, 0, settings)
    assert templates_of(index, hashes, 1, settings) == [(t + 1) % 10 for t in first]
    assert len(set(first)) > 3  # a seeded spread, not one template
    robin = templates_of(index, hashes, 0, type(settings)(**{**settings.__dict__, "template_choice": "round_robin"}))
    assert robin == [i % 10 for i in range(20)]


def test_token_lists_keep_one_past_a_row_so_a_cut_still_shows(world):
    _, jobs, _ = world_jobs(world)
    tok = jobs["senti"].tokenizer
    texts = ["short one", " ".join(["river stone market"] * 200)]
    full = tok.encode_batch(texts)
    kept = token_lists(tok, texts, keep=16).to_pylist()
    assert kept == [full[0], full[1][:16]] and len(full[1]) > 16
    assert token_lists(tok, texts).to_pylist() == full


def test_render_train_is_deterministic_and_variants_differ(world):
    _, jobs, _ = world_jobs(world, cache="cache-r1")
    job = jobs["senti"]
    read.read_split(job, "train")
    chunk = read.load_chunk(job, "train", 0)
    a = render_train(job.compiled, chunk, 0, job.settings, job.tokenizer)
    assert a.equals(render_train(job.compiled, chunk, 0, job.settings, job.tokenizer))
    b = render_train(job.compiled, chunk, 1, job.settings, job.tokenizer)
    assert [(t + 1) % 10 for t in a.column("template").to_pylist()] == b.column("template").to_pylist()
    assert a.column("key").to_pylist() == chunk.column("key").to_pylist()
    ids = a.column("input_ids").to_pylist()
    assert ids == [x[:job.settings.inputs_length] for x in job.tokenizer.encode_batch(a.column("inputs").to_pylist())]


def test_a_rendered_chunk_is_stored_once_with_its_statistics(world):
    _, jobs, _ = world_jobs(world, cache="cache-r2")
    job = jobs["senti"]
    read.read_split(job, "train")
    stats = render_unit(job, "train", 0, 0)
    assert stats["rows"] == stats["examples"] == 60 and stats["tokens"] > 0
    marker = stats_path(job.entry.rendered(0, 0))
    before = os.stat(marker).st_mtime_ns
    assert render_unit(job, "train", 0, 0) == stats and os.stat(marker).st_mtime_ns == before
    read.read_split(job, "test")
    evals = render_unit(job, "test", 0, 0)
    assert evals["rows"] == 10 * evals["examples"] == 100  # every template of every example


def _formatted(job, *, max_tokens: int = 4000, counts=(1, 2, 3), formats=None):
    """rte's job settings with the four prompt formats, several option styles and a few-shot block."""
    from dataclasses import replace

    from flanpipe.formats import shares_of
    from flanpipe.spec import FewShot, OptionsFormat

    fewshot = FewShot(max_exemplars=3, max_tokens=max_tokens, input_target_separator="\n",
                      exemplar_separator="\n\n", exemplar_counts=list(counts))
    fmt = OptionsFormat(header=["\n\nOPTIONS:", "\n\nChoices:", "\n\nPick from:"],
                        item=["\n- {option}", "\n({letter}) {option}"])
    formats = formats or {"zsopt": 0.25, "fsopt": 0.25, "zsnoopt": 0.25, "fsnoopt": 0.25}
    return replace(job.settings, fewshot=fewshot, options_format=fmt, formats=shares_of(formats))


def test_prompt_formats_noopt_has_no_suffix_and_fs_carries_exemplars(world):
    from flanpipe.audit.stats import split_options
    from flanpipe.render import Exemplars
    from flanpipe.store import read_table

    _, jobs, _ = world_jobs(world, cache="cache-r3")
    job = jobs["rte"]
    read.read_split(job, "train")
    settings = _formatted(job)
    chunk = read.load_chunk(job, "train", 0)
    shots = Exemplars(job.compiled, read_table(job.entry.fields("train", 0)), settings, job.tokenizer, "natural")
    values = read.fields_of(job.compiled, chunk)
    seen = set()
    for variant in range(4):
        table = render_train(job.compiled, chunk, variant, settings, job.tokenizer, shots=shots)
        assert table.column_names[-1] == "format"
        for i, r in enumerate(table.to_pylist()):
            seen.add(r["format"])
            opt, fs = not r["format"].endswith("noopt"), r["format"].startswith("fs")
            body, parsed = split_options(r["inputs"], settings.options_format)
            if r["turned"]:
                assert parsed is None
            elif opt:
                assert parsed == ["yes", "no"] and body
            else:  # noopt: no header of any style at the end of the input
                assert parsed is None
                assert not any(h in r["inputs"][-40:] for h in settings.options_format.headers)
            query = job.compiled.render(values[i], r["template"], options_format=settings.options_format,
                                        style=_style(r, settings, variant), with_options=opt)
            assert r["inputs"].endswith(query.inputs)
            if fs:  # at least one exemplar before the query (the budget allows it here)
                assert len(r["inputs"]) > len(query.inputs) and r["inputs"].count("\n\n") >= 1
                if not opt:
                    assert split_options(r["inputs"][:-len(query.inputs)], settings.options_format)[1] is None
            else:
                assert r["inputs"] == query.inputs
    assert seen == {"zsopt", "fsopt", "zsnoopt", "fsnoopt"}


def _style(row, settings, variant: int = 0):
    """The option style of a rendered row's use, as render_train draws it."""
    from flanpipe.formats import styles_of

    return styles_of(np.array([row["key_hash"]], np.uint64), variant, settings.options_format)[0]


def test_few_shot_uses_take_the_drawn_count_and_the_budget_prunes_them(world):
    from flanpipe.fewshot import exemplar_text
    from flanpipe.render import Exemplars
    from flanpipe.store import read_table

    _, jobs, _ = world_jobs(world, cache="cache-r4")
    job = jobs["rte"]
    read.read_split(job, "train")
    chunk = read.load_chunk(job, "train", 0)
    pool = read_table(job.entry.fields("train", 0))
    one = _formatted(job, counts=(1,), formats={"fsopt": 1.0})
    shots = Exemplars(job.compiled, pool, one, job.tokenizer, "natural")
    table = render_train(job.compiled, chunk, 0, one, job.tokenizer, shots=shots)
    values, pool_values = read.fields_of(job.compiled, chunk), read.fields_of(job.compiled, pool)
    for i, r in enumerate(table.to_pylist()):
        [row] = shots.picks(r["key"], r["key_hash"], 1)
        style = _style(r, one)
        exemplar = job.compiled.render(pool_values[row], r["template"], options_format=one.options_format, style=style)
        query = job.compiled.render(values[i], r["template"], options_format=one.options_format, style=style)
        assert r["inputs"] == exemplar_text(exemplar.inputs, exemplar.targets, one.fewshot) + query.inputs
    tight = _formatted(job, counts=(1,), formats={"fsopt": 1.0}, max_tokens=8)  # no exemplar fits
    shots = Exemplars(job.compiled, pool, tight, job.tokenizer, "natural")
    pruned = render_train(job.compiled, chunk, 0, tight, job.tokenizer, shots=shots)
    for i, r in enumerate(pruned.to_pylist()):
        query = job.compiled.render(values[i], r["template"], options_format=tight.options_format,
                                    style=_style(r, tight))
        assert r["inputs"] == query.inputs and r["format"] == "fsopt"


def test_without_formats_rows_have_no_format_column(world):
    _, jobs, _ = world_jobs(world, cache="cache-r5")
    job = jobs["rte"]
    read.read_split(job, "train")
    table = render_train(job.compiled, read.load_chunk(job, "train", 0), 0, job.settings, job.tokenizer)
    assert "format" not in table.column_names


def test_turned_weight_sets_the_share_of_turned_uses_for_every_variant(world):
    _, jobs, _ = world_jobs(world)
    base = jobs["senti"].settings
    turned = [False] * 7 + [True] * 3
    rng = np.random.default_rng(0)
    hashes = rng.integers(0, 2**63, 40_000, dtype=np.int64).astype(np.uint64)
    index = np.arange(len(hashes))
    for weight in (0.3, 0.0, 2.0):
        settings = type(base)(**{**base.__dict__, "turned_weight": weight})
        expected = 3 * weight / (3 * weight + 7)
        for variant in (0, 1, 5):
            used = np.asarray(templates_of(index, hashes, variant, settings, turned=turned))
            share = np.isin(used, [7, 8, 9]).mean()
            assert abs(share - expected) < 0.01, (weight, variant, share, expected)
        robin = np.asarray(templates_of(index, hashes, 0, type(settings)(**{**settings.__dict__,
                                                                             "template_choice": "round_robin"}),
                                        turned=turned))
        assert abs(np.isin(robin, [7, 8, 9]).mean() - expected) < 0.01
    # a repeat takes another template; weight 1 (the default) is today's choice, turned or not
    settings = type(base)(**{**base.__dict__, "turned_weight": 0.3})
    a, b = (templates_of(index, hashes, v, settings, turned=turned) for v in (0, 1))
    assert np.mean(np.asarray(a) != np.asarray(b)) > 0.99
    assert templates_of(index, hashes, 2, base, turned=turned) == templates_of(index, hashes, 2, base)


def test_template_cycle_weighs_and_spreads_the_templates():
    from flanpipe.render import template_cycle
    cycle = template_cycle([False] * 7 + [True] * 3, 0.3)
    assert np.bincount(cycle).tolist() == [10] * 7 + [3] * 3
    assert (cycle != np.roll(cycle, 1)).all()  # never the same template twice in a row, around the cycle too
    assert 0 not in template_cycle([True, False], 0).tolist() and len(template_cycle([True, False], 0)) == 1
