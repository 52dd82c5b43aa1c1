"""`flanpipe init DIR`: a starter project that compiles as written.

It holds a copy of the collection (``templates/``, which is yours to edit), one dataset of your own
(``templates/my_instructions/my_task.yaml`` with samples) in a cluster the taxonomy adds, and a
pipeline that extends the paper's run and holds the new cluster out.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from flanpipe.errors import OutputError
from flanpipe.paths import TEMPLATES_DIR

CLUSTER, DATASET = "my_instructions", "my_task"

PIPELINE = f"""\
# A pipeline of your own: the paper's run (flanpipe's flan2021.yaml), on this directory's collection,
# holding out the cluster templates/taxonomy.yaml adds. Compile it with:
#   flanpipe compile pipeline.yaml --templates templates --out out
extends: flanpipe:pipelines/flan2021.yaml
name: my_flan
held_out: [{CLUSTER}]
mixture_size: {{examples: 2000}}
output: {{shards: 1}}
"""

TAXONOMY_ADDITION = f"""\
  # Added by `flanpipe init`: your own cluster (hold it out to evaluate on it, or train on it).
  {CLUSTER}:
    title: My instructions
    datasets: [{DATASET}]
"""

_WORDINGS = [
    ("{{{{ instruction }}}}", False), ("Instruction: {{{{ instruction }}}}\nResponse:", False),
    ("{{{{ instruction }}}}\n\nAnswer:", False), ("Please do the following. {{{{ instruction }}}}", False),
    ("Task: {{{{ instruction }}}}", False), ("Here is a request.\n{{{{ instruction }}}}\nYour reply:", False),
    ("{{{{ instruction }}}} Reply in one line.", False), ("Q: {{{{ instruction }}}}\nA:", False),
    ("Write a request whose answer is \"{{{{ output }}}}\".", True),
    ("{{{{ instruction }}}}\nWhat would you write?", False),
]


def _dataset_yaml() -> str:
    templates = []
    for text, turned in _WORDINGS:
        target = "{{ instruction }}" if turned else "{{ output }}"
        templates.append(f"  - input: {json.dumps(text.format())}\n    target: {json.dumps(target)}"
                         + ("\n    turned: true" if turned else ""))
    return (f"""\
# Your own data as a dataset: each example is an instruction and its output. The samples source reads
# samples/{DATASET}/<split>.jsonl; `tfds:` names the builder a TFDS source would read instead.
name: {DATASET}
title: My task
cluster: {CLUSTER}
kind: generation
source:
  tfds: {DATASET}:1.0.0
  splits: {{train: train, validation: validation, test: test}}
fields:
  instruction: {{feature: instruction}}
  output: {{feature: output}}
raw: {{inputs: [instruction], target: output}}
templates:
""" + "\n".join(templates) + "\n")


_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
         "sixteen seventeen eighteen nineteen").split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def _words(n: int) -> str:
    if n < 20:
        return _ONES[n]
    return _TENS[n // 10] + ("" if n % 10 == 0 else "-" + _ONES[n % 10])


def _samples(first: int, count: int) -> str:
    rows = [{"instruction": f"Write the number {n} in words.", "output": _words(n)} for n in range(first, first + count)]
    return "".join(json.dumps(r) + "\n" for r in rows)


def write_starter(directory: Path) -> list[Path]:
    """Write the starter project into ``directory`` (new or empty); returns the files written at its top."""
    directory = Path(directory)
    if directory.exists() and any(directory.iterdir()):
        raise OutputError(f"{directory}: not empty; `flanpipe init` writes a new project into an empty directory")
    templates = directory / "templates"
    shutil.copytree(TEMPLATES_DIR, templates)
    with (templates / "taxonomy.yaml").open("a", encoding="utf-8") as f:
        f.write(TAXONOMY_ADDITION)
    (templates / CLUSTER).mkdir()
    (templates / CLUSTER / f"{DATASET}.yaml").write_text(_dataset_yaml(), encoding="utf-8")
    samples = templates / "samples" / DATASET
    samples.mkdir()
    for split, (first, count) in {"train": (0, 60), "validation": (60, 15), "test": (75, 15)}.items():
        (samples / f"{split}.jsonl").write_text(_samples(first, count), encoding="utf-8")
    (directory / "pipeline.yaml").write_text(PIPELINE, encoding="utf-8")
    return [directory / "pipeline.yaml", templates / "taxonomy.yaml", templates / CLUSTER / f"{DATASET}.yaml",
            samples]
