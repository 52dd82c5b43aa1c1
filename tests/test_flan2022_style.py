"""pipelines/flan2022_style.yaml: the Flan 2022 recipe plans, compiles on the bundled samples and audits clean."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from flanpipe.audit import audit_output
from flanpipe.cli import app
from flanpipe.compiler import CompileOptions, run_compile
from flanpipe.plan import load_plan
from flanpipe.verify import verify_output

REPO = Path(__file__).resolve().parent.parent
PIPELINE = REPO / "pipelines" / "flan2022_style.yaml"
COT = {"esnli", "gsm8k", "qasc"}
# One split where both parts train (sentiment held out); the NLI split, which removes the CoT part, is
# checked on the plan (compiling it too would double the test's time).
SPLITS = ("sentiment",)
# Flan 2022 weights normalized over the two parts present: 0.40 / (0.40 + 0.05) and 0.05 / 0.45.
SHARES = {"flan2021": 0.40 / 0.45, "cot": 0.05 / 0.45}


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("flan2022_style")
    run_compile(PIPELINE, CompileOptions(out=str(root / "out"), splits=SPLITS, cache_dir=str(root / "cache"),
                                         workers=2))
    return root / "out"


def examples(out: Path, split: str) -> pa.Table:
    return pa.concat_tables(pq.read_table(f) for f in sorted((out / split / "examples").glob("*.parquet")))


def test_plan_shows_the_sub_mixtures_and_their_shares() -> None:
    result = CliRunner().invoke(app, ["plan", str(PIPELINE)], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "mixture of 2 sub-mixtures" in result.output
    rows = [line for line in result.output.splitlines() if line.startswith("│ sentiment ")]
    assert any("flan2021" in r and "88.9%" in r for r in rows) and any("cot" in r and "11.1%" in r for r in rows)
    assert "flan2021: zsopt 25%, fsopt 25%, zsnoopt 25%, fsnoopt 25%; cot: zsopt 50%, fsopt 50%" in result.output


def test_it_compiles_verifies_and_audits_clean(out: Path) -> None:
    assert verify_output(out) == []
    document = audit_output(out)
    assert not document["status"]["failed"], document["status"]
    assert document["totals"]["dirty_eval_examples"] == 0  # decontaminated against the held-out eval sets
    top = json.loads((out / "manifest.json").read_text())
    assert top["decontamination"]["against"] == "held_out" and top["decontamination"]["ngram"] == 13
    for split in SPLITS:
        manifest = json.loads((out / split / "manifest.json").read_text())
        assert manifest["lengths"] == {"inputs": 2048, "targets": 512}


def test_sub_mixture_shares_formats_and_inversions_are_as_configured(out: Path) -> None:
    table = examples(out, "sentiment")
    datasets = table.column("dataset").to_pylist()
    formats = table.column("format").to_pylist()
    turned = table.column("turned").to_pylist()
    n = len(datasets)
    cot = [i for i, d in enumerate(datasets) if d in COT]
    flan = [i for i, d in enumerate(datasets) if d not in COT]
    assert abs(len(cot) / n - SHARES["cot"]) < 0.01 and abs(len(flan) / n - SHARES["flan2021"]) < 0.01
    flan_formats = Counter(formats[i] for i in flan)
    print("flan2021 part formats:", dict(flan_formats), "cot part:", dict(Counter(formats[i] for i in cot)))
    assert set(flan_formats) == {"zsopt", "fsopt", "zsnoopt", "fsnoopt"}
    assert all(abs(c / len(flan) - 0.25) < 0.04 for c in flan_formats.values())
    cot_formats = Counter(formats[i] for i in cot)
    assert set(cot_formats) == {"zsopt", "fsopt"} and all(abs(c / len(cot) - 0.5) < 0.05 for c in cot_formats.values())
    # CoT: 3 of 10 templates turned at weight 0.3 -> 0.9 / (7 + 0.9) of uses; Flan 2021 keeps weight 1.
    assert abs(sum(turned[i] for i in cot) / len(cot) - 0.9 / 7.9) < 0.04
    manifest = json.loads((out / "sentiment" / "manifest.json").read_text())
    assert manifest["counts"]["formats"] == dict(Counter(formats))
    for name, part in manifest["submixtures"].items():
        assert abs(part["realized_share"] - SHARES[name]) < 0.01


def test_holding_out_nli_removes_the_cot_part_with_it() -> None:
    plan = load_plan(PIPELINE)
    nli = plan.split("natural_language_inference")
    assert "chain_of_thought" in nli.removed and not COT & set(nli.train)
    assert [part.name for part in nli.submixtures] == ["flan2021"]  # the whole mixture: 100%
    assert {part.name for part in plan.split("sentiment").submixtures} == {"flan2021", "cot"}
