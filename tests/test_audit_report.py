"""The HTML report: self-contained, escaped, opens in headless Chromium without console errors, plots drawn."""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from matplotlib import image

from flanpipe.audit import audit_files
from flanpipe.audit.files_report import render_files_html
from flanpipe.audit.report import PLANNED, REALIZED, render_html
from flanpipe.audit.rows import Columns

from audit_fixtures import audited
from conftest import missing_tool

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.usefixtures("chromium")


@pytest.fixture
def chromium() -> str:
    if CHROMIUM is None:
        missing_tool("chromium is not installed (apt-get install -y chromium); the browser checks need it")
    return CHROMIUM  # type: ignore[return-value]
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars"]


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("report") / "report.html"
    path.write_text(render_html(audited("bad")), encoding="utf-8")
    return path


def _chromium(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp / 'profile'}", *args],  # type: ignore[list-item]
                          capture_output=True, text=True, timeout=120)


def test_report_is_self_contained(report):
    text = report.read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text, re.I)
    assert not re.search(r"<link\b|@import|url\(\s*['\"]?https?:", text, re.I)
    assert text.count("<svg") >= 7  # composition x2, lengths x2, packing, contamination, templates
    assert "<script>" in text and "<script src" not in text
    for section in ("Mixtures", "Packing", "Lint", "Leakage and contamination", "Templates", "Datasets"):
        assert f">{section}</h2>" in text
    assert "sample render of each template" in text and "\u27e8U+0007\u27e9" in text  # control chars made visible


def test_data_text_is_escaped():
    doc = copy.deepcopy(audited("bad"))
    evil = "<script>alert('x')</script> & <b>bold</b>"
    doc["lint"]["findings"][0]["message"] = evil
    doc["lint"]["findings"][0]["examples"][0]["inputs"] = evil
    name = next(iter(doc["datasets"]))
    doc["datasets"][name]["samples"]["train"]["0"]["targets"] = evil
    split = doc["splits"]["sentiment"]["datasets"]
    split["<i>x</i>&"] = split.pop(next(iter(split)))  # a name in tables and in a plot's tick labels
    text = render_html(doc)
    assert evil not in text and "alert(&#x27;x&#x27;)" in text and "&lt;b&gt;bold&lt;/b&gt;" in text
    assert "<i>x</i>" not in text and "&lt;i&gt;x&lt;/i&gt;&amp;" in text
    assert text.count("<script>") == 1


@needs_chromium
def test_report_opens_in_chromium_without_console_errors(report, tmp_path):
    run = _chromium(tmp_path, "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000", "--dump-dom",
                    report.as_uri() + "#selftest")
    assert run.returncode == 0, run.stderr[-2000:]
    console = [line for line in run.stderr.splitlines() if ":CONSOLE" in line]
    assert console == [], console
    found = re.search(r'data-selftest="([^"]*)"', run.stdout)
    assert found, "the page's script did not run"
    result = json.loads(found.group(1).replace("&quot;", '"'))
    assert result["errors"] == [] and result["sorted"] >= 20
    assert result["svgs"] == result["drawn"] >= 7  # every plot has a rendered size


@needs_chromium
def test_files_report_opens_in_chromium_without_console_errors(tmp_path):
    rows = [{"q": f"Question {i}: " + " ".join(f"w{(i * 7 + j) % 97}" for j in range(30)), "a": f"answer {i % 5}"}
            for i in range(80)]
    rows.append({**rows[4], "q": rows[4]["q"] + " extra"})  # a near-duplicate
    rows.append({"q": "Tell me \x07", "a": ""})  # a control character and an empty target
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    page = tmp_path / "files.html"
    page.write_text(render_files_html(audit_files(str(data), Columns(inputs="q", targets="a"))), encoding="utf-8")
    text = page.read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text, re.I) and "\u27e8U+0007\u27e9" in text
    run = _chromium(tmp_path, "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000", "--dump-dom",
                    page.as_uri() + "#selftest")
    assert run.returncode == 0, run.stderr[-2000:]
    assert [line for line in run.stderr.splitlines() if ":CONSOLE" in line] == []
    result = json.loads(re.search(r'data-selftest="([^"]*)"', run.stdout).group(1).replace("&quot;", '"'))
    assert result["errors"] == [] and result["sorted"] >= 10 and result["svgs"] == result["drawn"] >= 2


@needs_chromium
def test_screenshot_shows_the_plots(report, tmp_path):
    shot = tmp_path / "shot.png"
    run = _chromium(tmp_path, "--window-size=1280,2600", f"--screenshot={shot}", report.as_uri())
    assert run.returncode == 0 and shot.exists(), run.stderr[-2000:]
    pixels = (image.imread(str(shot))[..., :3] * 255).round().astype(int)

    def share(color: str) -> float:
        rgb = np.array([int(color[i:i + 2], 16) for i in (1, 3, 5)])
        return float(np.all(np.abs(pixels - rgb) <= 6, axis=-1).mean())

    # the composition bars (realized blue, planned grey) and histograms fill a visible part of the page
    assert share(REALIZED) > 0.02 and share(PLANNED) > 0.01
    assert pixels.std() > 20  # not a blank page
