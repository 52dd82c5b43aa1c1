"""Where the collection, the paper's pipelines and the assets live: the repository checkout, or the installed wheel.

A path written ``flanpipe:<part>/<rest>`` in a pipeline (``tokenizer``, ``extends``) names a file that
ships with flanpipe, wherever it is installed: ``flanpipe:assets/…``, ``flanpipe:pipelines/…``,
``flanpipe:templates/…``.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
_CHECKOUT = PACKAGE_DIR.parent
# A checkout (or an editable install of one) uses its own templates/ and pipelines/; a wheel carries copies
# under flanpipe/bundled/.
_IN_CHECKOUT = (_CHECKOUT / "pyproject.toml").is_file() and (_CHECKOUT / "templates" / "taxonomy.yaml").is_file()
TEMPLATES_DIR = _CHECKOUT / "templates" if _IN_CHECKOUT else PACKAGE_DIR / "bundled" / "templates"
PIPELINES_DIR = _CHECKOUT / "pipelines" if _IN_CHECKOUT else PACKAGE_DIR / "bundled" / "pipelines"
ASSETS_DIR = PACKAGE_DIR / "assets"
SCHEME = "flanpipe:"
_PARTS = {"assets": ASSETS_DIR, "pipelines": PIPELINES_DIR, "templates": TEMPLATES_DIR}


def package_path(value: str) -> Path | None:
    """The file a ``flanpipe:<part>/<rest>`` path names, or None when ``value`` is not such a path."""
    if not value.startswith(SCHEME):
        return None
    part, _, rest = value[len(SCHEME):].partition("/")
    if part not in _PARTS or not rest:
        raise ValueError(f"{value!r}: expected flanpipe:<{'|'.join(_PARTS)}>/<path>")
    return _PARTS[part] / rest
