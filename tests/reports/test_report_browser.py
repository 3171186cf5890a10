"""The HTML reports (bids_vlm/reports/) opened in a real headless Chromium: every figure loads,
the page logs no console error, and a screenshot of the first screen is kept as an artefact
(in ``$BIDS_VLM_ARTEFACTS``, else ``test-artifacts/`` at the repository root)."""
from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from PIL import Image

from browser import Browser, find_chromium

CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no Chromium on PATH (.ci/run installs Debian's chromium package "
                             "with apt-get; install it to run the browser tests)")
ARTEFACTS = Path(os.environ.get("BIDS_VLM_ARTEFACTS",
                                Path(__file__).resolve().parents[2] / "test-artifacts"))


@pytest.fixture(scope="module")
def browser():
    chromium = Browser(CHROMIUM)
    yield chromium
    chromium.close()


def _first_screen_is_drawn(png: bytes, name: str) -> Path:
    """Keep the screenshot; check it is a viewport-sized image with content, not a blank page."""
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTEFACTS / f"report_{name}.png"
    path.write_bytes(png)
    print(f"screenshot of {name}: {path}")
    with Image.open(io.BytesIO(png)) as img:
        assert img.format == "PNG" and img.size[0] >= 800 and img.size[1] >= 600
        colours = img.convert("L").getcolors(maxcolors=1 << 16)
    assert colours is None or len(colours) > 10  # text and figures, not one flat colour
    return path


@pytest.mark.parametrize("report, n_min", [("sub-01.html", 9), ("sub-02.html", 9),
                                           ("group.html", 6)])
def test_report_figures_load_without_console_errors(planted_outputs, browser, report, n_min):
    page = planted_outputs["out"] / report
    result = browser.open(page.as_uri())
    assert result["errors"] == [], f"{report}: console errors {result['errors']}"
    images = result["images"]
    assert len(images) >= n_min
    broken = [i["src"] for i in images if not (i["complete"] and i["naturalWidth"] > 0)]
    assert broken == [], f"{report}: figures that did not load: {broken}"
    _first_screen_is_drawn(result["screenshot"], report.replace(".html", ""))


def test_browser_check_sees_a_broken_figure_and_a_console_error(tmp_path, browser):
    """The same checks fail on a page with a missing figure and a script error."""
    Image.new("RGB", (70, 40), "red").save(tmp_path / "ok.png")
    page = tmp_path / "bad.html"
    page.write_text("<!DOCTYPE html><html><body><img src='ok.png'><img src='missing.png'>"
                    "<script>console.error('boom')</script></body></html>")
    result = browser.open(page.as_uri())
    widths = {i["src"]: i["naturalWidth"] for i in result["images"]}
    assert widths == {"ok.png": 70, "missing.png": 0}
    assert any("boom" in e for e in result["errors"])
    assert any("missing.png" in e for e in result["errors"])
