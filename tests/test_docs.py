"""The documentation: the MkDocs site builds with --strict (every link, anchor and API page resolves)
and reads offline; the README stays short and its links, like the docs pages', point at files."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README_LIMIT = 200
# Markdown links and images: [text](target) or ![alt](target "title").
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")


def nav_pages(nav: list) -> list[str]:
    """Every page path listed in mkdocs.yml's nav, nested sections included."""
    pages = []
    for entry in nav:
        values = entry.values() if isinstance(entry, dict) else [entry]
        for value in values:
            if isinstance(value, list):
                pages += nav_pages(value)
            elif isinstance(value, str) and not re.match(r"[a-z]+://", value):
                pages.append(value)
    return pages


def config() -> dict:
    return yaml.safe_load((ROOT / "mkdocs.yml").read_text())


def relative_links(path: Path) -> list[str]:
    """The relative link targets of a Markdown file, outside code blocks and inline code, without
    their anchors (a link to an anchor of the same page has no file and is skipped)."""
    text = INLINE_CODE.sub("", FENCE.sub("", path.read_text()))
    targets = []
    for target in LINK.findall(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("#"):
            continue
        targets.append(target.split("#", 1)[0])
    return targets


def offline_environment() -> dict[str, str]:
    """The build's environment: any attempt to fetch over HTTP(S) goes to a closed port and fails."""
    environment = dict(os.environ)
    for name in ("GH_TOKEN", "GITHUB_TOKEN"):
        environment.pop(name, None)
    closed = "http://127.0.0.1:9"
    environment.update(
        HTTP_PROXY=closed,
        HTTPS_PROXY=closed,
        http_proxy=closed,
        https_proxy=closed,
        NO_PROXY="",
        no_proxy="",
        NO_MKDOCS_2_WARNING="1",
    )
    return environment


def test_every_nav_page_exists():
    pages = nav_pages(config()["nav"])
    assert pages, "mkdocs.yml lists no pages"
    missing = [page for page in pages if not (DOCS / page).is_file()]
    assert not missing, f"nav lists pages that do not exist under docs/: {missing}"


def test_site_builds_strict_and_offline(tmp_path):
    site = tmp_path / "site"
    python = ROOT / ".venv" / "bin" / "python"
    finished = subprocess.run(
        [
            str(python if python.exists() else sys.executable),
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "--config-file",
            str(ROOT / "mkdocs.yml"),
            "--site-dir",
            str(site),
        ],
        cwd=ROOT,
        env=offline_environment(),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    log = finished.stdout + finished.stderr
    assert finished.returncode == 0, f"mkdocs build --strict failed:\n{log[-6000:]}"
    for page in nav_pages(config()["nav"]):
        assert (site / page).with_suffix(".html").is_file(), f"{page} was not built"
    # Readable from disk: no page loads a script, stylesheet or font from elsewhere.
    external = re.compile(r"<(?:script|link|img)\b[^>]*\b(?:src|href)=\"(?:https?:)?//", re.I)
    fetching = [
        str(path.relative_to(site))
        for path in site.rglob("*.html")
        if external.search(path.read_text(errors="replace"))
    ]
    assert not fetching, f"pages load something from the internet: {fetching[:5]}"


def test_readme_is_short():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) < README_LIMIT, f"README.md has {len(lines)} lines; keep it under {README_LIMIT}"


@pytest.mark.parametrize(
    "path",
    [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))],
    ids=lambda path: str(path.relative_to(ROOT)),
)
def test_relative_links_resolve(path):
    broken = [target for target in relative_links(path) if not (path.parent / target).exists()]
    assert not broken, f"{path.relative_to(ROOT)} links to files that do not exist: {broken}"


def test_link_checker_sees_links(tmp_path):
    """The checker itself: it finds relative links and images, and skips code, URLs and same-page
    anchors."""
    page = tmp_path / "page.md"
    page.write_text(
        '[a](x.md#y) ![b](img.png "t") `[c](code.md)` [d](https://e.org) [f](#g)\n\n'
        "```\n[h](fenced.md)\n```\n[i](../up.md)\n"
    )
    assert relative_links(page) == ["x.md", "img.png", "../up.md"]
    assert "getting-started.md" in relative_links(DOCS / "index.md")
