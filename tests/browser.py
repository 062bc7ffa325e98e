"""Open an HTML report in a real headless Chromium and read back what it rendered (for report tests)."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

BROWSERS = ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome")

# Injected into a copy of the page: after load, record what the browser made of it in a <pre> the DOM dump returns.
PROBE = """<script>
window.addEventListener('load', function () {
  var images = Array.from(document.images);
  var result = {
    title: document.title,
    headings: Array.from(document.querySelectorAll('h2')).map(function (h) { return h.textContent.trim(); }),
    images: images.length,
    images_decoded: images.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length,
    image_sizes: images.map(function (i) { return [i.naturalWidth, i.naturalHeight]; }),
    tables: document.querySelectorAll('table').length,
    text: document.body.innerText,
    body_height: document.body.scrollHeight,
    scripts: document.scripts.length - 1,
  };
  var out = document.createElement('pre');
  out.id = '__browser_probe__';
  out.textContent = JSON.stringify(result);
  document.body.appendChild(out);
});
</script>"""


@dataclass
class Rendered:
    """What the browser rendered: headings, how many images decoded, the text it shows."""

    title: str
    headings: list[str]
    images: int
    images_decoded: int
    image_sizes: list[list[int]]
    tables: int
    body_height: int
    scripts: int
    text: str


def find_browser() -> str:
    """A headless Chromium binary, or skip (install Debian's chromium-headless-shell)."""
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no headless Chromium (apt-get install chromium-headless-shell)")


def render(page: Path, workdir: Path) -> Rendered:
    """Load `page` in headless Chromium (JavaScript on, no network needed) and return what it rendered."""
    source = page.read_text(encoding="utf-8")
    probed = workdir / f"probed-{page.name}"
    probed.write_text(source.replace("</body>", PROBE + "</body>", 1), encoding="utf-8")
    command = [find_browser(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
               "--run-all-compositor-stages-before-draw", "--virtual-time-budget=10000", "--dump-dom", probed.resolve().as_uri()]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=120)
    match = re.search(r'<pre id="__browser_probe__">(.*?)</pre>', completed.stdout, re.S)
    assert match, f"the browser did not finish loading {page} (exit {completed.returncode}): {completed.stderr[-2000:]}"
    probe = json.loads(html.unescape(match.group(1)))
    return Rendered(**probe)
