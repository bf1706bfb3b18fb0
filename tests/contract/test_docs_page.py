"""The /docs page of both servers as a person sees it: rendered by a real browser (headless
Chromium), no card of the page is wider than the card, and the page scrolls only downwards.

A measuring script is added to a copy of the page, which Chromium opens from a file (the page is
self-contained: no scripts or assets of its own), and the script writes what it measured into the
DOM that ``--dump-dom`` prints.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from api_server.app import create_app as create_api_app
from data_server.app import create_app as create_data_app
from shared.settings import Settings

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="needs a headless browser: Debian's chromium package (apt-get install chromium)",
)

# Runs after layout: every element of an operation or schema card must end inside the card.
MEASURE = """<script>
window.addEventListener('load', () => {
  const overflowing = [];
  for (const card of document.querySelectorAll('.op')) {
    const edge = card.getBoundingClientRect().right;
    for (const element of card.querySelectorAll('*')) {
      const box = element.getBoundingClientRect();
      if (box.width && box.right > edge + 1) {
        overflowing.push(`${card.id} ${element.tagName} ${Math.round(box.right - edge)}px`);
        break;
      }
    }
  }
  const root = document.documentElement;
  const report = document.createElement('pre');
  report.id = 'layout-report';
  report.textContent = JSON.stringify(
    {horizontalScroll: root.scrollWidth - root.clientWidth, overflowing});
  document.body.appendChild(report);
});
</script>"""
_REPORT = re.compile(r'<pre id="layout-report">(.*?)</pre>', re.DOTALL)


def _docs_page(create_app, tmp_path: Path) -> str:
    (tmp_path / "data").mkdir(exist_ok=True)
    with TestClient(create_app(Settings(state_dir=tmp_path, sample_scale=0.001))) as client:
        response = client.get("/docs")
    assert response.status_code == 200
    return response.text


def _layout(html: str, width: int, tmp_path: Path) -> dict:
    page = tmp_path / "docs.html"
    page.write_text(html.replace("</body>", MEASURE + "</body>"), encoding="utf-8")
    assert CHROMIUM is not None
    rendered = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            f"--window-size={width},1000",
            "--virtual-time-budget=5000",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    match = _REPORT.search(rendered.stdout)
    assert match, "the measuring script did not run"
    return json.loads(match.group(1))


@pytest.mark.parametrize("server", ["api", "data"])
@pytest.mark.parametrize("width", [1400, 900])
def test_docs_page_fits_its_cards_in_a_real_browser(tmp_path, server, width):
    create_app = create_api_app if server == "api" else create_data_app
    layout = _layout(_docs_page(create_app, tmp_path), width, tmp_path)
    assert layout["overflowing"] == []
    assert layout["horizontalScroll"] == 0


def test_the_measurement_sees_an_overflowing_card(tmp_path):
    """The check can fail: a card holding one unbreakable line wider than the window is caught."""
    html = (
        '<!doctype html><html><body><main><div class="op" id="op-wide" '
        'style="border:1px solid">' + "<code>" + "x" * 400 + "</code></div></main></body></html>"
    )
    layout = _layout(html, 900, tmp_path)
    assert layout["overflowing"] == ["op-wide CODE " + layout["overflowing"][0].split()[-1]]
    assert layout["horizontalScroll"] > 0
