"""The CLI: exit codes, one-line user errors, tracebacks only with --debug, and each command's output."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from flanpipe.cli import app

from compile_fixtures import make_world

runner = CliRunner()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    make_world(root)
    return root


def test_validate_lists_every_problem_and_exits_1(world, tmp_path):
    import shutil

    bad = tmp_path / "templates"
    shutil.copytree(world / "templates", bad)
    tax = bad / "taxonomy.yaml"
    tax.write_text(tax.read_text().replace("[senti]", "[sentii]"))
    rte = bad / "natural_language_inference" / "rte.yaml"
    rte.write_text(rte.read_text().replace("{{ premise }}\n\n      Based", "{{ premis }}\n\n      Based"))
    result = runner.invoke(app, ["validate", str(bad)])
    assert result.exit_code == 1
    out = result.output
    assert "unknown dataset 'sentii'" in out and "undeclared variable 'premis'" in out
    assert "problem(s)" in out and "Traceback" not in out


def test_validate_clean_tree(world):
    result = runner.invoke(app, ["validate", str(world / "templates"), str(world / "pipeline.yaml")])
    assert result.exit_code == 0, result.output
    assert "file(s) valid" in result.output


def test_user_error_is_one_line_and_debug_shows_traceback(world, tmp_path):
    result = runner.invoke(app, ["plan", str(tmp_path / "missing.yaml")])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [f"error: {tmp_path / 'missing.yaml'}: file not found"]
    debug = runner.invoke(app, ["--debug", "plan", str(tmp_path / "missing.yaml")])
    assert debug.exit_code != 0 and debug.exception is not None


def test_compile_verify_and_json_summary(world, tmp_path):
    args = ["compile", str(world / "pipeline.yaml"), "--out", str(tmp_path / "o"), "--templates",
            str(world / "templates"), "--cache-dir", str(tmp_path / "c")]
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert set(summary) == {"natural_language_inference", "sentiment"}
    assert runner.invoke(app, ["verify", str(tmp_path / "o")]).exit_code == 0
    again = runner.invoke(app, [*args, "--quiet"])
    assert again.exit_code == 0 and again.output == ""
    (tmp_path / "o" / "tokenizer.model").write_bytes(b"tampered")
    bad = runner.invoke(app, ["verify", str(tmp_path / "o")])
    assert bad.exit_code == 1 and "tokenizer.model: sha256" in bad.output
