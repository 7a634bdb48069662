"""`autoresearch report`: one offline HTML file whose plots carry the study's figures."""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import zlib
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import optuna
import pytest
from ar_helpers import build
from optuna.trial import TrialState

from autoresearch.confirm import confirm_study
from autoresearch.report import write_report
from autoresearch.storage import open_study
from autoresearch.study_file import StudySpec


class _Scripts(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[str] = []
        self.srcs: list[str] = []
        self._in = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "script":
            self._in = True
            self.scripts.append("")
            self.srcs += [v or "" for k, v in attrs if k == "src"]

    def handle_endtag(self, tag: str) -> None:
        self._in = self._in and tag != "script"

    def handle_data(self, data: str) -> None:
        if self._in:
            self.scripts[-1] += data


BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")


REASON = "crash: probe exited 1: <b>bold</b> [/red] & co"


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory, tiny: tuple[Path, Path]) -> Path:
    d = tmp_path_factory.mktemp("report")
    spec = build(d / "s", tiny[1])
    open_study(spec).add_trial(
        optuna.trial.create_trial(state=TrialState.FAIL, user_attrs={"fail_reason": REASON})
    )
    confirm_study(spec, repeats=2, note=lambda _s: None)
    return write_report(spec, d / "report.html")


def _figures(doc: str) -> list[dict[str, Any]]:
    """Every Plotly.newPlot(id, data, layout) call's data and layout."""
    out = []
    for m in re.finditer(r'Plotly\.newPlot\(\s*"[^"]+",\s*(\[.*?\]),\s*(\{.*?\}),\s*\{', doc, re.S):
        out.append({"data": json.loads(m.group(1)), "layout": json.loads(m.group(2))})
    return out


def _browser() -> str | None:
    return next((b for b in (shutil.which(n) for n in BROWSERS) if b), None)


def _png_pixels(path: Path) -> tuple[int, int, bytes]:
    """(width, height, decompressed scanlines) of a PNG: enough to tell blank from drawn."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, size = 8, b"", (0, 0)
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + n]
        if kind == b"IHDR":
            size = struct.unpack(">II", body[:8])
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    return size[0], size[1], zlib.decompress(idat)


def test_report_is_offline_html_with_the_plots_data(spec: StudySpec, tmp_path: Path) -> None:
    out = write_report(spec, tmp_path / "report.html")
    parser = _Scripts()
    parser.feed(out.read_text())
    parser.close()
    assert parser.srcs == []  # nothing fetched from a CDN: works offline
    bundles = [s for s in parser.scripts if "plotly.js v" in s[:2000]]
    assert len(bundles) == 1  # plotly.js inline exactly once
    plots = "\n".join(s for s in parser.scripts if "Plotly.newPlot" in s)
    assert plots.count("Plotly.newPlot") >= 8  # projections, 3-D, HV, importances, slices, latency
    assert "trial 3" in plots and "130.0" in plots
    # Bytes are plotted in one unit per axis, the unit named in the title (150e6 B = 143 MiB).
    assert "memory_bytes (MiB)" in plots and "143.05" in plots and "150000000.0" not in plots
    assert '"name":"baseline"' in plots and "latency_p99_s" in plots


def test_report_on_a_single_trial_study(tmp_path: Path, tiny: tuple[Path, Path]) -> None:
    spec = build(tmp_path, tiny[1], n=1)
    text = write_report(spec, tmp_path / "r.html").read_text()
    assert "need &gt;= 3 completed searched trials" in text


def test_points_are_labelled_in_units_and_confirmed_ones_have_error_bars(report: Path) -> None:
    figs = _figures(report.read_text())
    front = next(
        f
        for f in figs
        if f["layout"].get("xaxis", {}).get("title", {}).get("text") == "decode_tok_s (tok/s)"
        and f["layout"]["yaxis"]["title"]["text"] == "memory_bytes (MiB)"
    )
    by_trial = {n: t for t in front["data"] for n in t["text"]}
    conf = by_trial["1"]  # re-measured by confirm (the stand-in probe: 1 tok/s, 1 B)
    assert conf["mode"] == "markers+text" and conf["name"].endswith("(confirmed)")
    assert conf["error_x"]["visible"] is True and conf["marker"]["symbol"] == "circle"
    unconf = by_trial["4"]  # trial 4 was never re-measured
    assert unconf["name"].endswith("(unconfirmed)") and unconf["error_x"]["visible"] is False
    assert unconf["marker"]["symbol"] == "circle-open"
    hover = " ".join(unconf["hovertext"])
    assert "trial 4" in hover and "unconfirmed" in hover and "90 ± 1.8 tok/s" in hover
    assert "e+0" not in hover and "0000000" not in hover


def test_all_trials_table_has_failures_and_their_reasons(report: Path) -> None:
    doc = report.read_text()
    table = doc.split("<table id='all-trials'>")[1].split("</table>")[0]
    rows = table.count("<tr>")
    assert rows == 1 + 10  # header + 6 complete + 3 failed + ours
    assert "crash: probe exited 3: boom" in table and "hang: x" in table
    assert "infeasible: over memory_bytes" in table  # trial 5
    assert "&lt;b&gt;bold&lt;/b&gt; [/red] &amp; co" in table  # escaped, never markup
    assert "<b>bold</b>" not in doc


def test_slices_fit_one_per_knob_and_importances_carry_a_caveat(report: Path) -> None:
    doc = report.read_text()
    figs = _figures(doc)
    slices = [
        f
        for f in figs
        if f["layout"].get("title", {}).get("text") in ("cache_fraction", "io_mode", "io_threads")
    ]
    assert len(slices) == 3 * 3  # three knobs x three objectives, each its own small plot
    for f in slices:
        assert f["layout"].get("width") is None and f["layout"]["height"] == 320
    log = next(f for f in slices if f["layout"]["title"]["text"] == "cache_fraction")
    assert log["layout"]["xaxis"]["type"] == "log" and log["layout"]["xaxis"]["dtick"] == "D2"
    assert "rough: only 5 searched trials (&lt; 20)" in doc


def test_report_renders_in_a_real_headless_browser(report: Path, tmp_path: Path) -> None:
    browser = _browser()
    if browser is None:
        reason = "no Chromium found (Debian: apt-get install chromium; .ci/run installs it)"
        print(f"SKIP browser test: {reason}")
        pytest.skip(reason)
    base = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--virtual-time-budget=20000",
        "--window-size=1400,2400",
    ]
    url = report.resolve().as_uri()
    dom = subprocess.run([*base, "--dump-dom", url], capture_output=True, text=True, timeout=180)
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    expected = len(_figures(report.read_text()))
    # Plotly drew every figure (each gets a main-svg) and no script error replaced one.
    assert html.count('class="plot-container plotly"') == expected
    assert html.count('class="textpoint"') >= 6  # trial labels drawn next to the points
    assert "all-trials" in html
    shot = tmp_path / "report.png"
    r = subprocess.run([*base, f"--screenshot={shot}", url], capture_output=True, timeout=180)
    assert r.returncode == 0 and shot.is_file(), r.stderr[-2000:]
    width, height, pixels = _png_pixels(shot)
    assert (width, height) == (1400, 2400)
    assert len(set(pixels[:: max(1, len(pixels) // 200_000)])) > 50  # drawn, not a blank page
