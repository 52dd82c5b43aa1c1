"""YAML loading that remembers the line of every key, so errors can name file:line."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from flanpipe.errors import SpecError

Loc = tuple[str | int, ...]


@dataclass
class Located:
    """Parsed YAML data plus the (file, line) where each key path was written."""

    data: Any
    path: Path
    lines: dict[Loc, tuple[Path, int]] = field(default_factory=dict)
    # Line where a scalar's text begins (the line after "|" for block scalars), for
    # mapping a Jinja error line inside a template back to the YAML file.
    text_lines: dict[Loc, int] = field(default_factory=dict)

    def where(self, loc: Loc) -> tuple[Path, int | None]:
        """The file and line of ``loc``, or of its nearest written parent."""
        loc = tuple(loc)
        while loc:
            if loc in self.lines:
                return self.lines[loc]
            loc = loc[:-1]
        return self.lines.get((), (self.path, None))

    def marks(self) -> Located:
        """The file's line marks without its data: what a worker needs to name file:line in an error."""
        return Located(None, self.path, self.lines, self.text_lines)


# libyaml's parser when PyYAML was built with it (about 6x faster); node marks are the same.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _walk(node: yaml.Node, path: Path, loc: Loc, lines: dict[Loc, tuple[Path, int]], text_lines: dict[Loc, int]) -> Any:
    lines.setdefault(loc, (path, node.start_mark.line + 1))
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = _scalar(key_node)
            if key in out:
                raise SpecError(path, key_node.start_mark.line + 1, dotted(loc + (key,)), "duplicate key")
            lines[loc + (key,)] = (path, key_node.start_mark.line + 1)
            out[key] = _walk(value_node, path, loc + (key,), lines, text_lines)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_walk(item, path, loc + (i,), lines, text_lines) for i, item in enumerate(node.value)]
    block = isinstance(node, yaml.ScalarNode) and node.style in ("|", ">")
    text_lines[loc] = node.start_mark.line + (2 if block else 1)
    return _scalar(node)


def _scalar(node: yaml.Node) -> Any:
    constructor = yaml.SafeLoader("")  # only constructs scalars from composed nodes
    return constructor.construct_object(node, deep=True)


def load_yaml(path: str | Path) -> Located:
    """Parse one YAML file, raising SpecError (with the line) when it is not valid YAML."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(path, None, None, "file not found") from None
    except UnicodeDecodeError as e:
        raise SpecError(path, None, None, f"not UTF-8 text ({e.reason})") from None
    try:
        node = yaml.compose(text, Loader=_LOADER)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark is not None else None
        raise SpecError(path, line, None, f"invalid YAML: {e.problem or e.context}") from None
    lines: dict[Loc, tuple[Path, int]] = {}
    text_lines: dict[Loc, int] = {}
    if node is None:
        return Located({}, path, {(): (path, 1)})
    data = _walk(node, path, (), lines, text_lines)
    return Located(data, path, lines, text_lines)


def dotted(loc: Loc) -> str:
    """Render a key path as ``templates[3].input``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out

