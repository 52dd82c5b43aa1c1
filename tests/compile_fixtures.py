"""A small compilable world: three datasets in three clusters, samples, a tokenizer and a pipeline."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from flanpipe.compiler import CompileOptions, CompileResult, run_compile
from flanpipe.tokenizer import train_tokenizer

from conftest import PIPE, TINY_TAXONOMY, generation_yaml, write

WORDS = ("river stone market garden winter light paper window orange music morning station bridge cloud "
         "teacher village engine forest letter harbor").split()


def _sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."


def make_world(root: Path, *, train: int = 40, seed: int = 0, pipeline_extra: str = "") -> Path:
    """Write templates/, samples/, tok.model and pipeline.yaml under ``root``; return the pipeline path."""
    rng = random.Random(seed)
    rte_src = Path(__file__).resolve().parent.parent / "templates" / "natural_language_inference" / "rte.yaml"
    write(root / "templates" / "natural_language_inference" / "rte.yaml", rte_src.read_text())
    for name, cluster in (("para", "paraphrase"), ("senti", "sentiment")):
        write(root / "templates" / cluster / f"{name}.yaml", generation_yaml(name, cluster))
    write(root / "templates" / "taxonomy.yaml", TINY_TAXONOMY)
    texts = []
    sizes = {"train": train, "validation": 10, "test": 10}
    for split, n in sizes.items():
        rows = [{"premise": _sentence(rng, rng.randint(5, 40)), "hypothesis": _sentence(rng, 6),
                 "label": i % 2, "idx": i} for i in range(n)]
        write(root / "samples" / "rte" / f"{split}.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
        texts += [r["premise"] for r in rows]
        for name in ("para", "senti"):
            rows = [{"text": _sentence(rng, rng.randint(3, 60)), "summary": _sentence(rng, rng.randint(2, 8))}
                    for _ in range(n)]
            write(root / "samples" / name / f"{split}.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
            texts += [r["text"] for r in rows]
    texts += ["Variant summarise OPTIONS yes no passage premise hypothesis claim"] * 5
    train_tokenizer(texts, root / "tok.model", vocab_size=400)
    pipeline = (PIPE.replace("source: {kind: samples}", f"source: {{kind: samples, dir: {root / 'samples'}}}")
                .replace("held_out: [natural_language_inference]", "held_out: [natural_language_inference, sentiment]")
                + pipeline_extra)
    return write(root / "pipeline.yaml", pipeline)


def compile_world(root: Path, out: str = "out", *, watch: Any = None, **options: object) -> CompileResult:
    """Compile ``root``'s pipeline into ``root/out`` with the world's templates and ``root/cache``."""
    options.setdefault("cache_dir", str(root / "cache"))
    return run_compile(root / "pipeline.yaml", CompileOptions(out=str(root / out), templates=root / "templates",
                                                              **options), watch=watch)  # type: ignore[arg-type]


def world_jobs(root: Path, cache: str = "cache") -> tuple[Any, dict[str, Any], Any]:
    """The world's plan, its per-dataset jobs (store under ``root/cache``) and the job context (output ``root/out``)."""
    from flanpipe.compiler import _context, dataset_jobs
    from flanpipe.plan import load_plan
    from flanpipe.tokenizer import Tokenizer

    plan = load_plan(root / "pipeline.yaml", templates=root / "templates")
    tokenizer = Tokenizer.from_file(plan.tokenizer, plan.tokenizer_options)
    jobs = dataset_jobs(plan, tokenizer, str(root / cache))
    return plan, jobs, _context(plan, str(root / "out"), jobs, CompileOptions(out=str(root / "out")), tokenizer)
