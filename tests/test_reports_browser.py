"""Both reports opened in headless Chromium: every image decodes, every link leads somewhere.

    make chromium && .venv/bin/python -m pytest tests/test_reports_browser.py -q

The browser, not a parser, decides whether an <img> loaded (naturalWidth > 0) and where a link
points. Relative links must resolve to files that exist; external links (the paper on arXiv) are
only checked for their syntax, since the machine has no network. Without Chromium these tests fail
with a message to run `make chromium`; they never skip.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
from browser import check_page, chromium
from report_builders import analysis_report, compare_report


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> dict[str, tuple[Path, int]]:
    """name -> (report.html, number of figures it should show)."""
    root = tmp_path_factory.mktemp("reports")
    analysis, summary = analysis_report(root)
    compare = compare_report(root, analysis)
    return {
        "analysis": (analysis / "report.html", len(summary["figures"])),
        "compare": (compare / "report.html", len(list((compare / "figures").glob("*.png")))),
    }


def broken_links(links: list[dict], page: Path) -> list[str]:
    """Links that lead nowhere: a relative one to a missing file, an external one malformed."""
    broken = []
    for link in links:
        url = urlparse(link["url"])
        if url.scheme == "data":
            continue
        if url.scheme == "file":
            target = Path(unquote(url.path))
            inside = target.resolve().is_relative_to(page.parent.resolve())
            if not target.exists() or not inside:
                broken.append(f"{link['raw']} -> {target}")
        elif url.scheme != "https" or "." not in url.netloc or " " in link["raw"]:
            broken.append(link["raw"])
    return broken


@pytest.mark.parametrize("name", ["analysis", "compare"])
def test_report_renders_in_chromium(reports, name):
    page, figures = reports[name]
    seen = check_page(page)
    assert seen["title"], "the report has no <title>"
    assert len(seen["images"]) == figures > 0
    not_loaded = [img["alt"] for img in seen["images"] if not img["naturalWidth"] > 0]
    assert not not_loaded, f"images the browser could not decode: {not_loaded}"
    assert broken_links(seen["links"], page) == []
    # Relative links are there to be checked: the tables in the analysis, run reports in compare.
    assert any(urlparse(link["url"]).scheme == "file" for link in seen["links"])
    assert "https://arxiv.org/abs/2605.11739" in [link["url"] for link in seen["links"]]


def test_the_link_check_catches_a_missing_file(reports, tmp_path):
    page = tmp_path / "report.html"
    page.write_text(
        "<!doctype html><title>t</title><a href='gone.csv'>x</a><a href='https://a b'>y</a>"
        "<img alt='none' src='missing.png'>"
    )
    seen = check_page(page)
    assert seen["images"][0]["naturalWidth"] == 0
    assert len(broken_links(seen["links"], page)) == 3


def test_a_missing_chromium_fails_with_the_fix(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(AssertionError, match="make chromium"):
        chromium()
