"""Every dataset file's feature map checked against the REAL TFDS builder of the installed package.

No network and no TensorFlow. Feature specs come from one of two methods, recorded per builder:

- ``info``: the builder class constructed with its config (no data, no download) and
  ``builder.info.features`` read — TFDS's own code computes the FeaturesDict.
- ``source``: builders whose ``_info`` needs TensorFlow (``super_glue`` except multirc/record: it
  uses ``tf.int32``). The class and its ``BUILDER_CONFIGS`` load fine; we evaluate its ``_info``
  source with a small AST interpreter that understands exactly the statement forms it uses
  (``features[k] = <feature>``, dict comprehensions over ``builder_config.features``, ``if`` on
  the config name) and maps ``tf.int32`` to ``np.int32``. Anything else makes it give up, and the
  builder is reported as not verifiable. The interpreter is itself checked against ``info`` on the
  configs where both work (super_glue/multirc and super_glue/record).

Checked per dataset file: every ``{feature: a/b}`` path and ``source.key`` exist (through nested
FeaturesDict / Sequence / Translation), the key is a scalar; the pinned version is one the builder
knows (or the 2021 version DATASETS.md lists: reported, not failed); every bundled sample line has
each needed path with the Python type of the feature (str Text, int ClassLabel/int, float, bool,
list for Sequence). Run this file directly to print the per-builder method table.
"""

from __future__ import annotations

import ast
import csv
import importlib
import inspect
import json
import re
import textwrap
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import tensorflow_datasets as tfds

from flanpipe.spec import load_dataset_file  # noqa: E402
from flanpipe.tfds_source import feature_children, missing_feature, needed_features  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TEMPLATES = REPO / "templates"
SAMPLES = TEMPLATES / "samples"
# Each dataset's builder pin as the project's DATASETS.md lists it (current, and the 2021 one where it differs),
# copied into the repository so the test reads nothing outside it.
DATASETS_MD_PINS = Path(__file__).resolve().parent / "data" / "datasets_md_pins.json"
# Pins that differ from DATASETS.md on purpose: the installed builders build only newer versions (or the
# TFDS-native builder replaces a Hugging Face one). Each is named in the dataset file's comments.
PIN_CHANGES = {
    "winogrande": "winogrande:1.2.0", "cola": "glue/cola:2.0.0", "paws_wiki": "paws_wiki/labeled_final_tokenized:1.1.0",
    "cnn_dailymail": "cnn_dailymail:3.4.0", "multi_news": "multi_news:2.1.0", "xsum": "xsum:1.1.0",
}
# The chain-of-thought datasets (Flan 2022; not in DATASETS.md, whose pins are FLAN 2021's): FLAN2022.md names the
# builders, the pins are the installed builders' versions (tfds 4.9.10), which test_pinned_version_exists checks.
FLAN2022_PINS = {"esnli": "esnli:0.1.0", "gsm8k": "gsm8k:1.0.0", "qasc": "qasc:0.1.0"}
DATASET_FILES = sorted(TEMPLATES.glob("*/*.yaml"))
F = tfds.features

for _module in ("text", "translate", "summarization", "question_answering", "structured"):
    try:  # builders register on import; these subpackages hold every builder the collection uses
        importlib.import_module(f"tensorflow_datasets.{_module}")
    except Exception:  # pragma: no cover - a broken optional subpackage must not hide the others
        pass


# ------------------------------------------------------------------ method 2: evaluate _info's source
class Unsupported(Exception):
    """The _info source uses a form the interpreter does not know: give up rather than guess."""


_DTYPES = {"int32": np.int32, "int64": np.int64, "float32": np.float32, "float64": np.float64, "bool": np.bool_,
           "string": np.str_}


class _InfoSource:
    """Evaluate the ``features`` a builder's ``_info`` builds, for one builder config."""

    def __init__(self, config: Any):
        self.config = config

    def run(self, fn: Any) -> Any:
        tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
        body = tree.body[0].body  # type: ignore[attr-defined]
        env: dict[str, Any] = {}
        for stmt in body:
            if isinstance(stmt, ast.Return):
                break
            self.stmt(stmt, env)
        if "features" not in env:
            raise Unsupported("no 'features' dict built before return")
        return F.FeaturesDict(env["features"])

    def stmt(self, node: ast.stmt, env: dict[str, Any]) -> None:
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            return  # docstring
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
            if isinstance(target, ast.Name):
                env[target.id] = self.expr(node.value, env)
                return
            if (isinstance(target, ast.Subscript) and isinstance(target.value, ast.Name)
                    and target.value.id == "features"):
                env["features"][self.expr(target.slice, env)] = self.expr(node.value, env)
                return
        if isinstance(node, ast.If):
            for stmt in node.body if self.expr(node.test, env) else node.orelse:
                self.stmt(stmt, env)
            return
        raise Unsupported(f"statement {ast.unparse(node)!r}")

    def expr(self, node: ast.expr, env: dict[str, Any]) -> Any:
        src = ast.unparse(node)
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name) and node.id in env:
            return env[node.id]
        if src == "self.builder_config.name":
            return self.config.name
        m = re.fullmatch(r"self\.builder_config\.(\w+)", src)
        if m:
            return getattr(self.config, m.group(1))
        m = re.fullmatch(r"(?:tf|np)\.(\w+)", src)
        if m and m.group(1) in _DTYPES:
            return _DTYPES[m.group(1)]
        if isinstance(node, ast.Compare) and len(node.ops) == 1:
            left, right = self.expr(node.left, env), self.expr(node.comparators[0], env)
            ops = {ast.Eq: lambda a, b: a == b, ast.NotEq: lambda a, b: a != b, ast.In: lambda a, b: a in b}
            if type(node.ops[0]) in ops:
                return ops[type(node.ops[0])](left, right)
        if isinstance(node, (ast.List, ast.Tuple)):
            return [self.expr(e, env) for e in node.elts]
        if isinstance(node, ast.Dict):
            return {self.expr(k, env): self.expr(v, env) for k, v in zip(node.keys, node.values)}  # type: ignore[arg-type]
        if isinstance(node, ast.DictComp) and len(node.generators) == 1:
            gen = node.generators[0]
            if isinstance(gen.target, ast.Name) and not gen.ifs:
                out = {}
                for item in self.expr(gen.iter, env):
                    inner = {**env, gen.target.id: item}
                    out[self.expr(node.key, inner)] = self.expr(node.value, inner)
                return out
        if isinstance(node, ast.Call):
            func = ast.unparse(node.func)
            if func.endswith(".startswith") and len(node.args) == 1:
                return self.expr(node.func.value, env).startswith(self.expr(node.args[0], env))  # type: ignore[attr-defined]
            m = re.fullmatch(r"tfds\.features\.(Text|ClassLabel|Sequence|FeaturesDict|Scalar|Tensor)", func)
            if m:
                args = [self.expr(a, env) for a in node.args]
                kwargs = {k.arg: self.expr(k.value, env) for k in node.keywords}
                return getattr(F, m.group(1))(*args, **kwargs)
        raise Unsupported(f"expression {src!r}")


def features_from_source(cls: type, config_name: str | None) -> Any:
    configs = {c.name: c for c in getattr(cls, "BUILDER_CONFIGS", [])}
    if config_name not in configs:
        raise Unsupported(f"config {config_name!r} not among BUILDER_CONFIGS")
    return _InfoSource(configs[config_name]).run(cls._info)


# ------------------------------------------------------------------ per-builder spec, with its method
@lru_cache(maxsize=None)
def real_builder(tfds_name: str, tmp: str = "/nonexistent-flanpipe-data-dir") -> dict[str, Any]:
    """{'method', 'features', 'versions', 'why'} for 'builder[/config]'; features None if not verifiable."""
    builder, _, config = tfds_name.partition("/")
    try:
        cls = tfds.builder_cls(builder)
    except Exception as e:
        return {"method": "none", "features": None, "versions": [], "why": f"builder not in the package: {e}"}
    versions = sorted({str(v) for v in [cls.VERSION, *getattr(cls, "SUPPORTED_VERSIONS", [])] if v}
                      | {str(v) for c in getattr(cls, "BUILDER_CONFIGS", []) if c.name == config and c.version
                         for v in [c.version, *getattr(c, "supported_versions", [])]})
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            b = cls(data_dir=tmp, config=config) if config else cls(data_dir=tmp)
            return {"method": "info", "features": b.info.features, "versions": sorted({*versions, *map(str, b.versions)}),
                    "why": ""}
    except ModuleNotFoundError as e:
        first = f"constructing needs {e.name}"
    except Exception as e:
        first = f"constructing failed: {type(e).__name__}: {e}"
    try:
        return {"method": "source", "features": features_from_source(cls, config or None), "versions": versions,
                "why": first}
    except Exception as e:
        return {"method": "none", "features": None, "versions": versions,
                "why": f"{first}; _info source not evaluable: {e}"}


def datasets_md_versions() -> dict[str, tuple[str, str | None]]:
    """DATASETS.md id -> (current tfds pin, 2021 pin or None)."""
    pins = json.loads(DATASETS_MD_PINS.read_text())
    return {name: (p["pin"], p["pin_2021"]) for name, p in pins.items()}


def _spec(path: Path):
    spec, _ = load_dataset_file(path)
    return spec


def _tfds_name(spec) -> str:
    return spec.source.tfds.split(":")[0]


# ------------------------------------------------------------------ sample type checks
def _leaf_problem(feature: Any, value: Any, where: str) -> str | None:
    if isinstance(feature, F.Sequence):
        inner = feature.feature
        if isinstance(inner, F.FeaturesDict):  # a Sequence of dicts is stored as a dict of lists
            return _leaf_problem(F.FeaturesDict({k: F.Sequence(v) for k, v in inner.items()}), value, where)
        if not isinstance(value, list):
            return f"{where}: expected a list (Sequence), got {type(value).__name__}"
        for i, v in enumerate(value):
            problem = _leaf_problem(inner, v, f"{where}[{i}]")
            if problem:
                return problem
        return None
    if isinstance(feature, F.FeaturesDict):
        if not isinstance(value, dict):
            return f"{where}: expected a dict of {sorted(feature.keys())}, got {type(value).__name__}"
        for k, sub in feature.items():
            if k not in value:
                return f"{where}/{k}: missing"
            problem = _leaf_problem(sub, value[k], f"{where}/{k}")
            if problem:
                return problem
        return None
    if isinstance(feature, F.Text):
        ok, want = isinstance(value, str), "str (Text)"
    elif isinstance(feature, F.ClassLabel):
        ok, want = isinstance(value, int) and not isinstance(value, bool), "int (ClassLabel)"
    elif isinstance(feature, F.Tensor):
        kind = np.dtype(feature.np_dtype).kind
        want_t = {"i": int, "u": int, "f": float, "b": bool}.get(kind, str)
        ok = isinstance(value, want_t) and (want_t is bool or not isinstance(value, bool))
        want = f"{want_t.__name__} ({feature.np_dtype})"
        if feature.shape:
            ok, want = isinstance(value, list), f"list (Tensor shape {feature.shape})"
    else:
        return None  # images etc.: not used by text datasets
    return None if ok else f"{where}: expected {want}, got {type(value).__name__} {value!r:.60}"


def _sample_problem(features: Any, example: dict[str, Any], path: str) -> str | None:
    node, value, done = features, example, []
    for part in path.split("/"):
        children = feature_children(node)
        depth_seq = isinstance(node, F.Sequence)
        if not isinstance(value, dict) or part not in value:
            return f"{'/'.join(done + [part])}: missing"
        node, value = children[part], value[part]  # type: ignore[index]
        if depth_seq:  # below a Sequence of dicts every value is a list of the inner feature
            node = F.Sequence(node)
        done.append(part)
    return _leaf_problem(node, value, path)


# ------------------------------------------------------------------ tests
IDS = [p.stem for p in DATASET_FILES]


@pytest.mark.parametrize("path", DATASET_FILES, ids=IDS)
def test_feature_paths_exist_in_real_builder(path):
    spec = _spec(path)
    real = real_builder(_tfds_name(spec))
    if real["features"] is None:
        pytest.xfail(f"{spec.source.tfds}: not verifiable: {real['why']}")
    problems = [f"{who} reads '{feature}': {p}" for who, feature in needed_features(spec)
                if (p := missing_feature(real["features"], feature))]
    assert not problems, f"{path.relative_to(REPO)} vs {spec.source.tfds} ({real['method']}): " + "; ".join(problems)
    if spec.source.key:
        node: Any = real["features"]
        for part in spec.source.key.split("/"):
            node = feature_children(node)[part]  # type: ignore[index]
        assert isinstance(node, (F.Text, F.Tensor)) and not isinstance(node, F.Sequence) and not node.shape, (
            f"{path.relative_to(REPO)}: source.key '{spec.source.key}' is {node!r}, not a scalar")


VERSION_NOTES: list[str] = []


@pytest.mark.parametrize("path", DATASET_FILES, ids=IDS)
def test_pinned_version_exists(path):
    spec = _spec(path)
    real = real_builder(_tfds_name(spec))
    if not real["versions"]:
        pytest.xfail(f"{spec.source.tfds}: builder not found: {real['why']}")
    pinned = spec.source.version
    if pinned in real["versions"]:
        return
    md = datasets_md_versions().get(spec.name)
    old = md[1].split(":")[-1] if md and md[1] else None
    assert pinned == old, (f"{path.relative_to(REPO)}: pins {spec.source.tfds}, but the installed builder knows only "
                           f"versions {real['versions']}")
    VERSION_NOTES.append(f"{spec.name}: pins the 2021 version {pinned}; installed builder has {real['versions']}")


SAMPLE_FILES = sorted(SAMPLES.glob("*/*.jsonl"))


@pytest.mark.parametrize("sample", SAMPLE_FILES, ids=[f"{p.parent.name}/{p.stem}" for p in SAMPLE_FILES])
def test_samples_have_builder_types(sample):
    dataset = sample.parent.name
    files = [p for p in DATASET_FILES if p.stem == dataset]
    assert files, f"samples/{dataset} has no dataset file templates/*/{dataset}.yaml"
    spec = _spec(files[0])
    real = real_builder(_tfds_name(spec))
    if real["features"] is None:
        pytest.xfail(f"{spec.source.tfds}: not verifiable: {real['why']}")
    problems = []
    for lineno, line in enumerate(sample.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        example = json.loads(line)
        for _, feature in needed_features(spec):
            if missing_feature(real["features"], feature) is None:  # missing paths fail the test above
                problem = _sample_problem(real["features"], example, feature)
                if problem:
                    problems.append(f"line {lineno}: {problem}")
    assert not problems, f"{sample.relative_to(REPO)} ({spec.source.tfds}): " + "; ".join(problems[:5]) + (
        f" (+{len(problems) - 5} more)" if len(problems) > 5 else "")


@pytest.mark.parametrize("config", ["multirc", "record"])
def test_source_method_agrees_with_info(config):
    """The AST interpreter reproduces TFDS's own FeaturesDict where both can run."""
    cls = tfds.builder_cls("super_glue")
    real = cls(data_dir="/nonexistent-flanpipe-data-dir", config=config).info.features
    assert repr(features_from_source(cls, config)) == repr(real)


def test_source_method_gives_up_on_unknown_code():
    class Odd:
        BUILDER_CONFIGS = [tfds.core.BuilderConfig(name="x")]

        def _info(self):
            features = {"a": tfds.features.Text()}
            for k in "bc":
                features[k] = tfds.features.Text()
            return features

    with pytest.raises(Unsupported, match="statement"):
        features_from_source(Odd, "x")


def test_sample_checker_catches_wrong_types():
    squad = real_builder("squad/v1.1")["features"]
    ok = {"answers": {"text": ["a"], "answer_start": [3]}}
    assert _sample_problem(squad, ok, "answers/text") is None
    assert "expected a list (Sequence), got str" in _sample_problem(squad, {"answers": {"text": "a"}}, "answers/text")
    assert "expected int" in _sample_problem(squad, {"answers": {"answer_start": [True]}}, "answers/answer_start")
    assert "answers/text: missing" in _sample_problem(squad, {"answers": {}}, "answers/text")
    assert "expected float" in _sample_problem(real_builder("glue/stsb")["features"], {"label": 3}, "label")
    assert "expected int (ClassLabel)" in _sample_problem(real_builder("glue/rte")["features"], {"label": "0"}, "label")
    assert "expected str (Text)" in _sample_problem(real_builder("wmt16_translate/de-en")["features"], {"en": 1}, "en")
    assert "expected bool" in _sample_problem(real_builder("bool_q")["features"], {"answer": 1}, "answer")


def pin_differences() -> list[str]:
    """Dataset files whose pin differs from DATASETS.md's current builder column (informational)."""
    md = datasets_md_versions()
    out = []
    for path in DATASET_FILES:
        spec = _spec(path)
        if spec.name in md and md[spec.name][0] != spec.source.tfds:
            out.append(f"{spec.name}: file pins {spec.source.tfds}, DATASETS.md lists {md[spec.name][0]}")
    return out


def method_table() -> list[tuple[str, str, str]]:
    rows = {}
    for path in DATASET_FILES:
        name = _tfds_name(_spec(path))
        real = real_builder(name)
        rows[name] = (name, real["method"], real["why"])
    return sorted(rows.values())


def test_every_builder_is_verified_by_its_spec_or_its_source():
    table = method_table()
    unverified = [f"{name}: {why}" for name, method, why in table if method == "none"]
    assert not unverified, unverified
    source = sorted(name for name, method, _ in table if method == "source")
    assert source == ["super_glue/cb", "super_glue/copa", "super_glue/rte", "super_glue/wic", "super_glue/wsc"]


def test_pins_differ_from_datasets_md_only_where_documented():
    md = datasets_md_versions()
    pins = {_spec(p).name: _spec(p).source.tfds for p in DATASET_FILES}
    assert set(md) == set(pins) - set(FLAN2022_PINS)
    assert {name: pins[name] for name in FLAN2022_PINS} == FLAN2022_PINS
    differ = {name: tfds_name for name, tfds_name in pins.items() if name in md and md[name][0] != tfds_name}
    assert differ == PIN_CHANGES, pin_differences()


# ------------------------------------------------------------------ chain of thought: the builders' own code
def _samples(dataset: str, split: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (SAMPLES / dataset / f"{split}.jsonl").read_text().splitlines() if line]


def test_gsm8k_samples_are_what_the_builder_makes_of_raw_lines(tmp_path):
    """The installed builder's _generate_examples, run on the samples' raw {question, answer} lines, yields the
    samples (its annotation/short_answer split included): the raw data format the field map parses is real."""
    raw = tmp_path / "train.jsonl"
    rows = _samples("gsm8k", "train") + _samples("gsm8k", "test")
    raw.write_text("".join(json.dumps({"question": r["question"], "answer": r["answer"]}) + "\n" for r in rows))
    builder = tfds.builder_cls("gsm8k")(data_dir=str(tmp_path / "data"))
    made = [ex for _, ex in builder._generate_examples(raw)]
    assert made == rows
    assert all(r["answer"].rsplit("\n", 1)[-1].startswith("#### ") for r in rows)


def test_esnli_samples_are_what_the_builder_makes_of_its_csv_rows(tmp_path):
    """e-SNLI's CSV columns through the installed builder's _generate_examples give the samples; train files have
    no Explanation_2/3 columns (empty strings), and labels are the ClassLabel names in our options' order."""
    names = real_builder("esnli")["features"]["label"].names
    assert names == ["entailment", "neutral", "contradiction"]  # verdict/relation in esnli.yaml index by this order
    builder = tfds.builder_cls("esnli")(data_dir=str(tmp_path / "data"))
    for split in ("train", "validation", "test"):
        rows = _samples("esnli", split)
        columns = ["pairID", "gold_label", "Sentence1", "Sentence2", "Explanation_1"] + (
            ["Explanation_2", "Explanation_3"] if split != "train" else [])
        path = tmp_path / f"{split}.csv"
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, columns)
            writer.writeheader()
            for i, r in enumerate(rows):
                writer.writerow({"pairID": f"{split}{i}", "gold_label": names[r["label"]], "Sentence1": r["premise"],
                                 "Sentence2": r["hypothesis"], "Explanation_1": r["explanation_1"],
                                 **({"Explanation_2": r["explanation_2"], "Explanation_3": r["explanation_3"]}
                                    if split != "train" else {})})
        made = [ex for _, ex in builder._generate_examples([path])]
        encoded = [{**ex, "label": names.index(ex["label"])} for ex in made]
        assert encoded == rows, split


def test_qasc_samples_follow_the_builder_layout():
    """qasc's generator needs TensorFlow (tf.io.gfile), so its layout is checked directly: choices A-H as a dict of
    lists, answerKey one of the labels, formatted_question as the builder's source data writes it."""
    features = real_builder("qasc")["features"]
    assert set(features.keys()) == {"id", "question", "choices", "answerKey", "fact1", "fact2", "combinedfact",
                                    "formatted_question"}
    for split in ("train", "validation", "test"):
        for r in _samples("qasc", split):
            assert r["choices"]["label"] == list("ABCDEFGH") and len(r["choices"]["text"]) == 8
            assert r["answerKey"] in r["choices"]["label"] and r["fact1"] and r["fact2"]
            assert r["formatted_question"].startswith(r["question"] + " (A) ")


if __name__ == "__main__":
    for name, method, why in method_table():
        print(f"{name:45} {method:7} {why}")
    print("\n".join(pin_differences()))
