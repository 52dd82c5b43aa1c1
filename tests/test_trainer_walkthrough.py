"""docs/trainer.md's Llama walkthrough, run exactly as written: checkpoint, compile, train, export, eval, reload."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def walkthrough() -> str:
    """The sh block after the ``<!-- llama-walkthrough -->`` marker in docs/trainer.md."""
    text = (REPO / "docs" / "trainer.md").read_text()
    found = re.search(r"<!-- llama-walkthrough -->\n```sh\n(.*?)\n```", text, re.S)
    assert found, "docs/trainer.md lost its <!-- llama-walkthrough --> block"
    return found.group(1)


def test_the_llama_walkthrough_works_as_written(tmp_path: Path) -> None:
    # The block runs from the project root; here a scratch root whose trainer/ is the project's.
    (tmp_path / "trainer").symlink_to(REPO / "trainer")
    (tmp_path / "runs").mkdir()
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
               JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    run = subprocess.run(["bash", "-euo", "pipefail", "-c", walkthrough()], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stderr[-3000:]

    manifest = json.loads((tmp_path / "out" / "llama" / "manifest.json").read_text())
    tokenizer = manifest["tokenizer"]
    assert (tokenizer["kind"], tokenizer["bos_id"], tokenizer["eos_id"], tokenizer["pad_id"]) == (
        "tokenizer.json", 1, 2, 2)  # the checkpoint's ids: <s> 1, </s> 2, padded with eos by the rule
    export = json.loads((tmp_path / "runs" / "llama-nli-hf" / "flanpipe_export.json").read_text())
    assert export["step"] == 20 and "tokenizer.json" in export["files"]
    results = json.loads((tmp_path / "runs" / "llama-nli-eval.json").read_text())
    assert {"rte", "cb"} <= set(results["zero_shot"])
    printed = run.stdout.strip().splitlines()
    assert printed[-1] == "360768"  # transformers counts the parameters the trainer reported
