"""The flanpipe command line: thin typer commands over the library."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from flanpipe import preview, validate as validation
from flanpipe.audit import AuditSettings, Columns, NearSettings, audit_table, is_output, run_audit
from flanpipe.collection import TEMPLATES_DIR, load_collection
from flanpipe.errors import AuditError, CompileError
from flanpipe.compiler import DEFAULT_CACHE, CompileOptions, describe_compile, run_compile
from flanpipe.plan import load_plan
from flanpipe.progress import Snapshot
from flanpipe.report import (bad_examples_lines, compile_table, decontamination_lines, plan_table, rates_table,
                             sources_table, submixtures_table)
from flanpipe.sources import availability, prepare_script
from flanpipe.starter import write_starter
from flanpipe.verify import verify_output
from flanpipe.spec import write_schemas
from flanpipe.files import sha256_file
from trainer import __main__ as trainer_cli
from flanpipe.vocab import train_from_collection

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Compile FLAN-style instruction-tuning data.")
console = Console()
if not console.is_terminal:  # piped or captured: no terminal width to fit, so do not squeeze tables
    console = Console(width=120)
err_console = Console(stderr=True)
_STATE = {"debug": False}
# Every command that reads the collection takes it from --templates: dataset files, taxonomy and samples/.
TemplatesOption = Annotated[Path, typer.Option("--templates", help="Templates directory (dataset files, taxonomy, "
                                                                  "samples/).")]


@app.callback()
def main(debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False) -> None:
    _STATE["debug"] = debug


def _fail(error: Exception, *, log: Path | None = None) -> None:
    if _STATE["debug"]:
        raise error
    err_console.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
    if log is not None and log.exists() and log.stat().st_size:
        err_console.print(f"[dim]worker log: {log}[/]", highlight=False, soft_wrap=True)
    raise typer.Exit(1)


@contextmanager
def _worker_logs(*, enabled: bool) -> Iterator[tuple[Path | None, Console]]:
    """Send everything written to file descriptor 2 (Beam's worker processes log there) to a log file.

    Yields the log's path and a console on a copy of the original descriptor, for flanpipe's
    own progress. The log is removed after a successful compile and kept, and named, after a failure.
    """
    if not enabled:
        yield None, err_console
        return
    fd, name = tempfile.mkstemp(prefix="flanpipe-compile-", suffix=".log")
    saved = os.dup(2)
    terminal = os.fdopen(os.dup(2), "w", buffering=1)
    sys.stderr.flush()
    os.dup2(fd, 2)
    os.close(fd)
    ok = False
    try:
        yield Path(name), Console(file=terminal, force_terminal=err_console.is_terminal)
        ok = True
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        terminal.close()
        if ok:
            os.unlink(name)


@app.command()
def validate(paths: Annotated[Optional[list[Path]], typer.Argument(help="Template dirs or pipeline files.")] = None
             ) -> None:
    """Check every dataset, taxonomy and pipeline file; list all problems (exit 1 if any)."""
    problems, checked = validation.validate_paths(paths or [])
    for p in problems:
        err_console.print(f"[red]✗[/] {p}", highlight=False, soft_wrap=True)
    if problems:
        err_console.print(f"{len(problems)} problem(s) in {checked} file(s)")
        raise typer.Exit(1)
    console.print(f"[green]✓[/] {checked} file(s) valid")


@app.command()
def render(
    dataset: Annotated[str, typer.Argument(help="Dataset id, e.g. rte.")],
    template: Annotated[Optional[int], typer.Option("--template", "-t", help="Template index 0-9 (default: all).")] = None,
    n: Annotated[int, typer.Option("--n", help="Examples to show.")] = 5,
    split: Annotated[str, typer.Option("--split", help="train, validation or test.")] = "train",
    mode: Annotated[str, typer.Option("--mode", help="natural, dataset_name or none.")] = "natural",
    templates: TemplatesOption = TEMPLATES_DIR,
) -> None:
    """Pretty-print rendered inputs and targets from the collection's samples."""
    try:
        rows = preview.render_samples(dataset, template=template, n=n, split=split, mode=mode,
                                      collection=load_collection(templates))
    except CompileError as e:
        _fail(e)
    for row in rows:
        console.rule(f"{dataset} {row.key}  template {row.rendered.template}"
                     + ("  (turned)" if row.rendered.turned else ""))
        console.print("[bold]input[/]", highlight=False)
        console.print(row.rendered.inputs, markup=False, highlight=False)
        console.print("[bold]target[/]", highlight=False)
        console.print(row.rendered.targets, markup=False, highlight=False)


@app.command()
def plan(
    pipeline: Annotated[Path, typer.Argument(help="Pipeline YAML.")],
    split: Annotated[Optional[list[str]], typer.Option("--split", help="Only these splits.")] = None,
    rates: Annotated[bool, typer.Option("--rates", help="Also list every dataset's mixing rate.")] = False,
    templates: TemplatesOption = TEMPLATES_DIR,
) -> None:
    """Show what a pipeline builds: each held-out split, clusters removed, datasets kept, counts, rates."""
    try:
        p = load_plan(pipeline, only=split, templates=templates, require_data=False)
    except CompileError as e:
        _fail(e)
    console.print(plan_table(p))
    if p.submixtures:
        console.print(submixtures_table(p))
    unknown = sorted(d for d, n in p.counts.items() if n is None)
    if unknown:
        err_console.print(f"[yellow]note:[/] {len(unknown)} dataset(s) not prepared, counts and rates unknown: "
                          f"{', '.join(unknown[:8])}{', ...' if len(unknown) > 8 else ''}; "
                          f"`flanpipe sources {pipeline}` says how to prepare them", highlight=False, soft_wrap=True)
    if rates:
        for s in p.splits:
            console.print(rates_table(p, s))


@app.command()
def sources(
    pipeline: Annotated[Path, typer.Argument(help="Pipeline YAML.")],
    script: Annotated[Optional[Path], typer.Option("--script", help="Write a shell script that prepares every "
                                                   "missing TFDS dataset.")] = None,
    templates: TemplatesOption = TEMPLATES_DIR,
) -> None:
    """List every dataset the pipeline needs: its source, whether it is prepared (with counts), how to prepare it."""
    try:
        p = load_plan(pipeline, templates=templates, require_data=False)
        rows = availability([p.collection.datasets[d] for d in p.datasets], p.source)
    except CompileError as e:
        _fail(e)
    console.print(sources_table(rows, p.source))
    ready = sum(r.ready for r in rows)
    console.print(f"{ready} of {len(rows)} dataset(s) ready", highlight=False)
    if script is not None:
        script.write_text(prepare_script(rows))
        script.chmod(0o755)
        console.print(f"wrote {script} ({sum(1 for r in rows if not r.ready and r.command)} dataset(s) to prepare)",
                      highlight=False)
    if ready < len(rows):
        raise typer.Exit(1)


@app.command()
def init(directory: Annotated[Path, typer.Argument(help="A new (or empty) directory.")]) -> None:
    """Write a starter project: a copy of the collection with a dataset of your own, and a pipeline that
    extends the paper's run."""
    try:
        written = write_starter(directory)
    except CompileError as e:
        _fail(e)
    for path in written:
        console.print(f"wrote {path}", highlight=False)
    console.print(f"next: cd {directory} && flanpipe validate templates pipeline.yaml && "
                  f"flanpipe compile pipeline.yaml --templates templates --out out", highlight=False)


@app.command()
def schema(out: Annotated[Path, typer.Option("--out", help="Directory for the JSON Schemas.")] = Path("docs/schemas")
           ) -> None:
    """Write JSON Schemas of the dataset, taxonomy and pipeline YAML files (for editor completion)."""
    for path in write_schemas(out):
        console.print(f"wrote {path}")


tokenizer_app = typer.Typer(help="SentencePiece tokenizer commands.", no_args_is_help=True)
app.add_typer(tokenizer_app, name="tokenizer")


@tokenizer_app.command("train")
def tokenizer_train(
    out: Annotated[Path, typer.Option("--out", help="Output .model path.")],
    vocab_size: Annotated[int, typer.Option("--vocab-size", help="Vocabulary size.")] = 8000,
    pipeline: Annotated[Optional[Path], typer.Option("--pipeline", help="Read text from this pipeline's source "
                                                     "(default: the bundled samples).")] = None,
    templates: TemplatesOption = TEMPLATES_DIR,
) -> None:
    """Train a SentencePiece model on the rendered collection (every template of every train example)."""
    try:
        path, n = train_from_collection(out, vocab_size=vocab_size, pipeline=pipeline, templates=templates)
    except CompileError as e:
        _fail(e)
    console.print(f"wrote {path} (vocab {vocab_size}, {n} texts, sha256 {sha256_file(path)})")


@app.command("compile")
def compile_(
    pipeline: Annotated[Path, typer.Argument(help="Pipeline YAML.")],
    out: Annotated[str, typer.Option("--out", help="Output directory: a path or a URL (gs://...).")],
    runner: Annotated[str, typer.Option("--runner", help="direct, dask, dataflow, flink or spark.")] = "direct",
    workers: Annotated[int, typer.Option("--workers", help="Local worker processes (direct runner).")] = 1,
    mode: Annotated[Optional[str], typer.Option("--mode", help="Direct runner mode: in_memory or "
                                                "multi_processing (default: by --workers).")] = None,
    split: Annotated[Optional[list[str]], typer.Option("--split", help="Only these splits.")] = None,
    cache_dir: Annotated[str, typer.Option("--cache-dir", envvar="FLANPIPE_CACHE",
                                           help="Rendered+tokenized dataset cache (path or URL).")] = str(DEFAULT_CACHE),
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace another pipeline's output.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress output.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the manifest summary as JSON.")] = False,
    beam_arg: Annotated[Optional[list[str]], typer.Option("--beam-arg", help="Extra Beam pipeline option, "
                                                          "repeatable, e.g. --beam-arg=--project=p.")] = None,
    dask_address: Annotated[Optional[str], typer.Option("--dask-address", help="dask.distributed scheduler "
                                                        "(default: start a local cluster).")] = None,
    templates: TemplatesOption = TEMPLATES_DIR,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Check inputs and print the job's stages; "
                                          "run nothing.")] = False,
    table_cache_mb: Annotated[int, typer.Option("--table-cache-mb", min=1, help="Per worker: MiB of rendered rows "
                                                "kept while packing.")] = 256,
) -> None:
    """Compile a pipeline into packed ArrayRecord + Parquet mixtures, one per held-out split."""
    options = CompileOptions(out=str(out), runner=runner, workers=workers, mode=mode, splits=tuple(split or ()),
                             cache_dir=str(cache_dir), overwrite=overwrite, beam_args=tuple(beam_arg or ()),
                             dask_address=dask_address, templates=templates, table_cache_mb=table_cache_mb)
    if dry_run:
        try:
            stages = describe_compile(pipeline, options)
        except CompileError as e:
            _fail(e)
        console.print(f"{runner} job, {len(stages)} stages:\n  " + "\n  ".join(stages), highlight=False)
        return
    log: Path | None = None
    try:
        with _worker_logs(enabled=not _STATE["debug"]) as (log, terminal):
            say = (lambda msg: None) if quiet or json_out else (lambda msg: terminal.print(f"[dim]{msg}[/]"))
            with _job_progress(terminal, enabled=not (quiet or json_out)) as watch:
                result = run_compile(pipeline, options, progress=say, watch=watch)
    except CompileError as e:
        _fail(e, log=log)
    manifest = result.manifest
    if not (quiet or json_out):
        err_console.print(f"[dim]read and rendered {len(result.cache_misses)} dataset(s), "
                          f"{len(manifest['datasets']) - len(result.cache_misses)} from the cache ({cache_dir})[/]")
    if json_out:
        console.print_json(data=manifest["summary"])
    elif not quiet:
        console.print(compile_table(manifest))
    if not json_out:
        for line in bad_examples_lines(manifest):
            err_console.print(f"[yellow]warning:[/] {line}", highlight=False, soft_wrap=True)
        if not quiet:
            for line in decontamination_lines(manifest):
                console.print(line, highlight=False, soft_wrap=True)


@contextmanager
def _job_progress(terminal: Console, *, enabled: bool) -> Iterator[Callable[[Snapshot], None] | None]:
    """A live rich display of the job's committed work (datasets, chunks, shards, eval sets), or nothing (also when
    stderr is not a terminal: a log file gets the summary, not redrawn bars)."""
    if not enabled or not terminal.is_terminal:
        yield None
        return
    columns = (TextColumn("{task.description:<22}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    # Transient: the bars go when the job ends, so a failure reads as its error line (the summary follows a success).
    with Progress(*columns, console=terminal, transient=True) as bar:
        tasks = {name: bar.add_task(name, total=None) for name in
                 ("datasets prepared", "chunks rendered", "shards written", "eval sets written")}

        def show(s: Snapshot) -> None:
            for name, done, total in (("datasets prepared", s.datasets_done, s.datasets),
                                      ("chunks rendered", s.chunks_done, s.chunks or None),
                                      ("shards written", s.shards_done, s.shards),
                                      ("eval sets written", s.evals_done, s.evals)):
                bar.update(tasks[name], completed=done, total=total)

        yield show


@app.command()
def verify(out: Annotated[str, typer.Argument(help="A compiled output directory (path or URL).")]) -> None:
    """Re-check every checksum and the leakage rule of a compiled output; exit 1 on any problem."""
    problems = verify_output(out)
    for p in problems:
        err_console.print(f"[red]✗[/] {p}", highlight=False, soft_wrap=True)
    if problems:
        raise typer.Exit(1)
    console.print(f"[green]✓[/] {out}: every checksum matches, no leakage")


_FILES_ONLY = "files only"


@app.command()
def audit(target: Annotated[str, typer.Argument(help="A compiled output directory, or JSONL/Parquet/CSV files of rows "
                                                     "(a path or a quoted glob).")],
          html: Annotated[Optional[Path], typer.Option(help="Write the self-contained HTML report here.")] = None,
          json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the audit JSON here.")] = None,
          error: Annotated[Optional[list[str]], typer.Option(help="Also fail on this rule (repeatable).")] = None,
          allow: Annotated[Optional[list[str]], typer.Option(help="Do not fail on this rule (repeatable).")] = None,
          ngram: Annotated[int, typer.Option(help="Words per contamination n-gram.")] = 13,
          inputs: Annotated[Optional[str], typer.Option(help="Files: the field holding the input.",
                                                        rich_help_panel=_FILES_ONLY)] = None,
          targets: Annotated[Optional[str], typer.Option(help="Files: the field holding the target.",
                                                         rich_help_panel=_FILES_ONLY)] = None,
          options: Annotated[Optional[str], typer.Option(help="Files: a field holding the answer options (a list).",
                                                         rich_help_panel=_FILES_ONLY)] = None,
          dataset: Annotated[Optional[str], typer.Option(help="Files: a field naming each row's dataset (default: "
                                                              "the file name).", rich_help_panel=_FILES_ONLY)] = None,
          template: Annotated[Optional[str], typer.Option(help="Files: a field naming each row's template.",
                                                          rich_help_panel=_FILES_ONLY)] = None,
          key: Annotated[Optional[str], typer.Option(help="Files: a field giving each row's key (default: "
                                                          "file:line).", rich_help_panel=_FILES_ONLY)] = None,
          file_format: Annotated[Optional[str], typer.Option("--format", help="Files: jsonl, parquet or csv (default: "
                                                                              "from the extension).",
                                                             rich_help_panel=_FILES_ONLY)] = None,
          against: Annotated[Optional[Path], typer.Option(help="Files: compare with this compiled output's eval sets "
                                                               "(default: the bundled collection's).",
                                                          rich_help_panel=_FILES_ONLY)] = None,
          near_threshold: Annotated[float, typer.Option(help="Files: near-duplicate similarity threshold (0-1].",
                                                        rich_help_panel=_FILES_ONLY)] = 0.8) -> None:
    """Statistics, lint, leakage and n-gram contamination of a compiled output, or of instruction rows in files
    (plus near-duplicates); exit 1 if an error rule fires."""
    file_flags = {"--inputs": inputs, "--targets": targets, "--options": options, "--dataset": dataset,
                  "--template": template, "--key": key, "--format": file_format, "--against": against}
    try:
        settings = AuditSettings.of(errors=error, allowed=allow, ngram=ngram)
        columns = None
        if is_output(target):
            given = [flag for flag, value in file_flags.items() if value is not None]
            if given:
                raise AuditError(f"{target} is a compiled output directory: {', '.join(given)} apply to files only")
        else:
            if file_format is not None and file_format not in ("jsonl", "parquet", "csv"):
                raise AuditError(f"--format: expected jsonl, parquet or csv, got {file_format!r}")
            if not 0 < near_threshold <= 1:
                raise AuditError(f"--near-threshold: expected a value in (0, 1], got {near_threshold}")
            columns = Columns(inputs=inputs or "inputs", targets=targets or "targets", options=options,
                              dataset=dataset, template=template, key=key, format=file_format)
        document = run_audit(target, settings, html=html, json_path=json_out, columns=columns, against=against,
                             near=NearSettings(threshold=near_threshold),
                             progress=lambda msg: err_console.print(f"[dim]{msg}[/]"))
    except CompileError as e:
        _fail(e)
    console.print(audit_table(document))
    if document["status"]["failed"]:
        raise typer.Exit(1)


# The trainer's commands, under the same CLI: flanpipe train | eval | prompt-tune (jax loads only when run).
app.command("train", help="Train (or resume) a JAX model on a compiled split (see docs/trainer.md).")(
    trainer_cli.train)
app.command("eval", help="Evaluate a checkpoint on the split's held-out eval sets.")(trainer_cli.eval_)
app.command("prompt-tune", help="Prompt-tune a frozen model on one held-out dataset, then evaluate.")(
    trainer_cli.prompt_tune)


def run() -> None:
    """Console-script entry point."""
    try:
        app()
    except CompileError as e:  # errors raised outside a command's own handling
        if _STATE["debug"]:
            raise
        err_console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        sys.exit(1)


if __name__ == "__main__":
    run()
