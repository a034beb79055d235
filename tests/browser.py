"""Headless Chromium for the report tests and the docs' screenshots (Debian's `chromium`).

    .venv/bin/python tests/browser.py REPORT.html OUT.png    # a screenshot, as in docs/figures/

`check_page(html)` opens a report through file:// inside a small wrapper page and returns what the
browser saw: each <img>'s naturalWidth and each link's URL as the browser resolved it. The machine
has no network, so the flags turn off everything that would call out; without them Chromium waits
on refused connections. `make chromium` installs the browser.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CHROMIUM = "chromium"
FLAGS = (
    "--headless",
    "--no-sandbox",  # we run as root, where Chromium's sandbox refuses to start
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-quic",
    "--hide-scrollbars",
)
# The wrapper loads the report in an iframe and writes what it finds into its own DOM, which
# --dump-dom prints. --allow-file-access-from-files lets a file:// page read a file:// iframe.
WRAPPER = """<!doctype html><html><body><pre id="result">pending</pre>
<iframe id="report" src="{src}" style="width:1200px;height:800px"></iframe>
<script>
document.getElementById("report").addEventListener("load", () => {{
  const doc = document.getElementById("report").contentDocument;
  const images = [...doc.images].map(img => ({{
    alt: img.alt, complete: img.complete, naturalWidth: img.naturalWidth}}));
  const links = [...doc.querySelectorAll("[href], [src]")].map(el => ({{
    tag: el.tagName, raw: el.getAttribute("href") ?? el.getAttribute("src"),
    url: el.href || el.src}}));
  document.getElementById("result").textContent = JSON.stringify(
    {{title: doc.title, images, links}});
}});
</script></body></html>"""


def chromium() -> str:
    """The browser's path; AssertionError (a failed test, never a skip) when it is missing."""
    path = shutil.which(CHROMIUM)
    assert path, "chromium is not installed; run `make chromium` (apt-get install chromium)."
    return path


def _run(args: list[str], profile: Path, timeout: float = 60) -> str:
    command = [chromium(), *FLAGS, f"--user-data-dir={profile}", *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    assert done.returncode == 0, f"chromium failed ({done.returncode}): {done.stderr[-2000:]}"
    return done.stdout


def check_page(page: Path) -> dict:
    """{'title', 'images': [{alt, complete, naturalWidth}], 'links': [{tag, raw, url}]}."""
    page = Path(page).resolve()
    with tempfile.TemporaryDirectory() as tmp:
        wrapper = Path(tmp) / "wrapper.html"
        wrapper.write_text(WRAPPER.format(src=page.as_uri()))
        dom = _run(
            [
                "--allow-file-access-from-files",
                "--virtual-time-budget=5000",
                "--dump-dom",
                wrapper.as_uri(),
            ],
            Path(tmp) / "profile",
        )
    found = re.search(r'<pre id="result">(.*?)</pre>', dom, re.DOTALL)
    assert found, f"the wrapper page did not render: {dom[:500]}"
    text = html.unescape(found.group(1))
    assert text != "pending", f"the report did not load in the browser: {page}"
    return json.loads(text)


def screenshot(page: Path, png: Path, width: int = 1280, height: int = 2400) -> None:
    """A PNG of the page's top `height` pixels, reduced to a 256-colour palette to stay small."""
    from PIL import Image

    png = Path(png).resolve()
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.png"
        _run(
            [
                f"--screenshot={raw}",
                f"--window-size={width},{height}",
                Path(page).resolve().as_uri(),
            ],
            Path(tmp) / "profile",
        )
        Image.open(raw).convert("RGB").quantize(colors=256).save(png, optimize=True)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python tests/browser.py REPORT.html OUT.png")
    screenshot(Path(sys.argv[1]), Path(sys.argv[2]))
    print(f"{sys.argv[2]}: {Path(sys.argv[2]).stat().st_size // 1024} KB")
