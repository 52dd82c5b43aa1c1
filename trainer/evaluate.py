"""Held-out evaluation as in the paper: rank classification or greedy generation + BLEU/ROUGE, per template.

For every eval set of the split (and every few-shot eval set) this reports each template's
validation and test score, the mean over templates, and the test score of the template
with the best validation score ("best-dev template").
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import sacrebleu
from jax.experimental import multihost_utils
from jax.sharding import Mesh
from rich.console import Console
from rich.table import Table
from rouge_score import rouge_scorer

from flanpipe.errors import SpecError, did_you_mean
from trainer import checkpoint, data, model
from trainer.config import ModelConfig, TrainerConfig, resolve_config

Scores = dict[str, Any]


# --------------------------------------------------------------------------- metrics
def accuracy(correct: Sequence[bool]) -> float:
    """Percent of True."""
    return 100.0 * sum(correct) / len(correct)


def bleu(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU (sacrebleu defaults, 0-100)."""
    return float(sacrebleu.corpus_bleu(list(predictions), [list(references)]).score)


_ROUGE = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)


def rouge(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F-measures (0-100); ``rougeL`` is the headline score."""
    totals: dict[str, float] = defaultdict(float)
    for prediction, reference in zip(predictions, references):
        for name, score in _ROUGE.score(reference, prediction).items():
            totals[name] += score.fmeasure
    return {name: 100.0 * total / len(predictions) for name, total in totals.items()}


def summarize(per_template: Mapping[int, Mapping[str, float]]) -> Scores:
    """Mean over templates per split, and the best-dev template's test score.

    Ties in validation score go to the lower template number; with no validation scores
    there is no best-dev template.
    """
    mean = {}
    for split in ("validation", "test"):
        values = [scores[split] for scores in per_template.values() if split in scores]
        if values:
            mean[split] = sum(values) / len(values)
    dev = [(scores["validation"], -t) for t, scores in per_template.items() if "validation" in scores]
    best = -max(dev)[1] if dev else None
    return {
        "mean_over_templates": mean,
        "best_dev_template": best,
        "best_dev_test": per_template[best].get("test") if best is not None else None,
    }


# --------------------------------------------------------------------------- the evaluator
@dataclass(frozen=True)
class _Prepared:
    rows: list[data.EvalRow]
    skipped: int


class Evaluator:
    """Scores eval sets with one model config on one mesh; jitted functions are built once and reused."""

    def __init__(self, split: data.Split, config: TrainerConfig, mesh: Mesh, *, prompt_length: int = 0):
        self.split, self.config, self.mesh, self.prompt_length = split, config, mesh, prompt_length
        self.tokenizer = data.load_tokenizer(split)
        # Round the eval batch up so every device gets the same number of rows.
        self.batch_size = math.ceil(config.eval.batch_size / mesh.size) * mesh.size
        self.decode_steps = min(config.eval.max_decode_length or split.targets_length, split.targets_length)

    def run(self, params: Any, *, soft_prompt: Any = None, datasets: Iterable[str] | None = None) -> Scores:
        """{'zero_shot': {dataset: scores}, 'few_shot': {...}} for the split's eval sets."""
        wanted = None if datasets is None else list(datasets)
        known = set(self.split.eval_sets) | set(self.split.fewshot_eval_sets)
        for name in wanted or ():
            if name not in known:
                raise SpecError(self.split.path / "manifest.json", None, "eval",
                                f"no eval set {name!r}{did_you_mean(name, known)}")
        out: Scores = {}
        for section, sets in (("zero_shot", self.split.eval_sets), ("few_shot", self.split.fewshot_eval_sets)):
            chosen = {k: v for k, v in sets.items() if wanted is None or k in wanted}
            if chosen:
                out[section] = {name: self.evaluate_set(eval_set, params, soft_prompt)
                                for name, eval_set in sorted(chosen.items())}
        return out

    def evaluate_set(self, eval_set: data.EvalSet, params: Any, soft_prompt: Any = None) -> Scores:
        """Scores of one eval set: per template and split, mean over templates, best-dev template."""
        prepared = self._prepare(eval_set)
        score: Callable[..., list[Any]] = (
            self._rank_classify if eval_set.kind == "classification" else self._generate)
        per_row: list[Any] = score(prepared.rows, params, soft_prompt)
        groups: dict[tuple[int, str], list[int]] = defaultdict(list)
        for i, row in enumerate(prepared.rows):
            groups[(row.template, row.split)].append(i)
        templates: dict[int, dict[str, float]] = defaultdict(dict)
        details: dict[str, dict[str, Any]] = defaultdict(dict)
        for (template, split), indices in sorted(groups.items()):
            value, extra = self._metric(eval_set, [prepared.rows[i] for i in indices], [per_row[i] for i in indices])
            templates[template][split] = value
            details[str(template)][split] = {"n": len(indices), **extra}
        return {
            "kind": eval_set.kind,
            "metric": eval_set.metric,
            "templates": {str(t): scores for t, scores in sorted(templates.items())},
            **summarize(templates),
            "details": dict(details),
            "rows": len(prepared.rows),
            "skipped_rows": prepared.skipped,
        }

    def _prepare(self, eval_set: data.EvalSet) -> _Prepared:
        rows = data.read_eval_rows(eval_set.file)
        usable = [r for r in rows
                  if eval_set.kind == "generation" or (r.options and 0 <= r.answer_index < len(r.options))]
        # A classification set's turned templates are generation tasks without options;
        # rank classification cannot score them, so they are counted and left out.
        skipped = len(rows) - len(usable)
        limit = self.config.eval.max_examples
        if limit is not None:
            seen: dict[tuple[str, int], int] = defaultdict(int)
            kept = []
            for row in usable:
                if seen[(row.split, row.template)] < limit:
                    seen[(row.split, row.template)] += 1
                    kept.append(row)
            usable = kept
        return _Prepared(usable, skipped=skipped)

    def _metric(
        self, eval_set: data.EvalSet, rows: list[data.EvalRow], outputs: list[Any]
    ) -> tuple[float, dict[str, Any]]:
        if eval_set.metric == "accuracy":
            return accuracy(outputs), {}
        references = [r.targets for r in rows]
        samples = {"samples": [{"prediction": p, "target": r} for p, r in zip(outputs[:3], references[:3])]}
        if eval_set.metric == "bleu":
            return bleu(outputs, references), samples
        scores = rouge(outputs, references)
        return scores["rougeL"], {**scores, **samples}

    def _featurize(self, input_ids: Sequence[int], target_ids: Sequence[int]) -> data.Batch:
        return data.featurize(
            input_ids, target_ids, layout=self.split.layout, inputs_length=self.split.inputs_length,
            targets_length=self.split.targets_length, special=self.split.special, prompt_length=self.prompt_length,
            truncate=self.split.truncate,
        )

    def _run_batches(self, rows: list[data.Batch], fn: Callable[[data.Batch], np.ndarray]) -> np.ndarray:
        outputs = []
        for chunk in data.batches(rows, self.batch_size):
            batch = data.shard_full_batch(data.stack_rows(chunk, self.batch_size), self.mesh)
            # Gather the row-sharded result from every process (a no-op copy on one host).
            outputs.append(np.asarray(multihost_utils.process_allgather(fn(batch), tiled=True))[: len(chunk)])
        return np.concatenate(outputs)

    def _rank_classify(self, rows: list[data.EvalRow], params: Any, soft_prompt: Any) -> list[bool]:
        """Score log p(option + EOS | input) for every option; the highest-scoring option is the prediction."""
        if not rows:
            return []
        inputs = self.tokenizer.encode_batch([r.inputs for r in rows])
        option_texts = sorted({o for r in rows for o in r.options})
        option_ids = dict(zip(option_texts, self.tokenizer.encode_batch(option_texts)))
        pairs = [self._featurize(inputs[i], option_ids[o]) for i, r in enumerate(rows) for o in r.options]
        scores = self._run_batches(pairs, lambda b: _option_scores(params, b, soft_prompt, config=self.config.model))
        correct, offset = [], 0
        for row in rows:
            row_scores = scores[offset : offset + len(row.options)]
            offset += len(row.options)
            correct.append(int(np.argmax(row_scores)) == row.answer_index)
        return correct

    def _generate(self, rows: list[data.EvalRow], params: Any, soft_prompt: Any) -> list[str]:
        """Greedy decoding of up to ``decode_steps`` tokens after each input, stopping at EOS."""
        if not rows:
            return []
        inputs = self.tokenizer.encode_batch([r.inputs for r in rows])
        featurized = []
        for ids in inputs:
            row = self._featurize(ids, [])
            # Decoding fills the target part, which starts at the first loss-weighted position.
            start = int(np.argmax(row["decoder_loss_weights"])) if self.split.layout == "decoder_only" else 0
            row["decode_start"] = np.asarray([start], np.int32)
            featurized.append(row)
        eos, pad = self.split.special.eos, self.split.special.pad
        tokens = self._run_batches(featurized, lambda b: _greedy_decode(
            params, b, soft_prompt, config=self.config.model, steps=self.decode_steps, eos_id=eos, pad_id=pad))
        texts = []
        for row, generated in zip(featurized, tokens):
            out = generated[int(row["decode_start"][0]) :][: self.decode_steps].tolist()
            texts.append(self.tokenizer.decode(out[: out.index(eos)] if eos in out else out))
        return texts


@partial(jax.jit, static_argnames=("config",))
def _option_scores(params: Any, batch: data.Batch, soft_prompt: Any, *, config: ModelConfig) -> jax.Array:
    """Sum of target-token log-probabilities of each row (its option and EOS)."""
    log_probs = model.token_log_probs(params, batch, config, soft_prompt)
    return jnp.sum(log_probs * batch["decoder_loss_weights"], axis=-1)


@partial(jax.jit, static_argnames=("config", "steps", "eos_id", "pad_id"))
def _greedy_decode(params: Any, batch: data.Batch, soft_prompt: Any, *, config: ModelConfig, steps: int, eos_id: int,
                   pad_id: int) -> jax.Array:
    """Fill decoder_target_tokens from each row's decode_start by argmax, until ``eos_id`` in every row.

    No key/value cache: every step reruns the full (fixed-shape) forward pass. That keeps the
    model a single function; generation sets are small and short (targets_length tokens).
    """
    targets = batch["decoder_target_tokens"]
    size, length = targets.shape
    start = batch["decode_start"][:, 0]
    rows = jnp.arange(size)
    # During decoding every position belongs to the row's single example; the causal mask
    # keeps each step from seeing the (empty) positions after it.
    fixed = dict(batch, decoder_segment_ids=jnp.ones_like(targets),
                 decoder_positions=jnp.broadcast_to(jnp.arange(length), targets.shape))
    fixed.pop("decode_start")

    def cond(state: tuple[jax.Array, jax.Array, jax.Array]) -> jax.Array:
        step, _, done = state
        return (step < steps) & ~jnp.all(done)

    def body(state: tuple[jax.Array, jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array, jax.Array]:
        step, tokens, done = state
        inputs = jnp.pad(tokens, ((0, 0), (1, 0)), constant_values=pad_id)[:, :-1]  # shifted as the packer does
        step_batch = dict(fixed, decoder_input_tokens=inputs, decoder_target_tokens=tokens)
        out = model.logits(params, step_batch, config, soft_prompt)
        position = jnp.minimum(start + step, length - 1)
        next_token = jnp.argmax(out[rows, position], axis=-1).astype(tokens.dtype)
        next_token = jnp.where(done, tokens[rows, position], next_token)
        tokens = tokens.at[rows, position].set(next_token)
        return step + 1, tokens, done | (next_token == eos_id)

    _, tokens, _ = jax.lax.while_loop(cond, body, (jnp.int32(0), targets, jnp.zeros((size,), bool)))
    return tokens


# --------------------------------------------------------------------------- entry points
def evaluate(
    data_dir: str | Path,
    config: TrainerConfig | str | Path,
    workdir: str | Path,
    *,
    overrides: Iterable[str] = (),
    step: int | None = None,
    datasets: Iterable[str] | None = None,
    console: Console | None = None,
) -> Scores:
    """Evaluate a run's checkpoint on the split's held-out eval sets; write and print the results.

    Args:
      data_dir: the compiled split directory ``DIR/<split>``.
      config: a trainer config (path or loaded) matching the run.
      workdir: the run's workdir (checkpoints are read from ``W/checkpoints``).
      overrides: ``a.b=value`` config overrides.
      step: checkpoint step (default: the latest).
      datasets: only these eval sets (default: all).
      console: where to print the table (default: stdout; pass ``Console(quiet=True)`` to silence).

    Returns:
      The results dict, also written to ``W/eval/step_<step>.json``.
    """
    cfg = resolve_config(config, overrides)
    split = data.open_split(data_dir)
    data.check_split(split, cfg, config if not isinstance(config, TrainerConfig) else "<config>")
    mesh = data.make_mesh()
    params, chosen = checkpoint.load_params(Path(workdir), cfg, mesh, step=step)
    results = evaluate_params(split, cfg, params, mesh=mesh, datasets=datasets, step=chosen)
    if jax.process_index() == 0:
        write_results(results, Path(workdir) / "eval" / f"step_{chosen:08d}.json")
        print_results(results, console or Console())
    return results


def evaluate_params(
    split: data.Split,
    config: TrainerConfig,
    params: Any,
    *,
    mesh: Mesh,
    soft_prompt: Any = None,
    datasets: Iterable[str] | None = None,
    step: int | None = None,
    evaluator: Evaluator | None = None,
) -> Scores:
    """Evaluate in-memory parameters (and optionally a soft prompt) on the split's eval sets."""
    prompt_length = 0 if soft_prompt is None else int(soft_prompt.shape[0])
    evaluator = evaluator or Evaluator(split, config, mesh, prompt_length=prompt_length)
    scores = evaluator.run(params, soft_prompt=soft_prompt, datasets=datasets)
    return {"split": split.name, "config": config.name, "step": step, **scores}


def write_results(results: Scores, path: Path) -> None:
    """Write results as JSON (atomically: temp file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def print_results(results: Scores, console: Console) -> None:
    """One table row per (setting, dataset): metric, template count, means, best-dev template and its test score."""
    table = Table(title=f"{results.get('config')} on {results.get('split')} (step {results.get('step')})")
    for column in ("shots", "dataset", "metric", "tmpls", "dev mean", "test mean", "best dev", "its test"):
        table.add_column(column, justify="left" if column in ("shots", "dataset", "metric") else "right")

    def fmt(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}"

    for section, label in (("zero_shot", "zero"), ("few_shot", "few")):
        for name, scores in results.get(section, {}).items():
            mean = scores["mean_over_templates"]
            table.add_row(
                label, name, scores["metric"], str(len(scores["templates"])),
                fmt(mean.get("validation")), fmt(mean.get("test")),
                "-" if scores["best_dev_template"] is None else str(scores["best_dev_template"]),
                fmt(scores["best_dev_test"]),
            )
    console.print(table)
