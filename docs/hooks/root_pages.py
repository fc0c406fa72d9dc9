"""mkdocs hook: the site's home page is README.md and its changelog CHANGELOG.md, read from the repository root.

docs/index.md and docs/changelog.md are placeholders; their text is replaced by the root file's at build time,
and links written for the repository (``docs/BENCHMARKS.md``, ``CHANGELOG.md``) are pointed at the site's pages.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGES = {"index.md": "README.md", "changelog.md": "CHANGELOG.md"}


def _site_links(text: str) -> str:
    text = re.sub(r"\]\(docs/", "](", text)
    return re.sub(r"\]\(CHANGELOG\.md", "](changelog.md", text)


def on_page_markdown(markdown, page, config, files, **kwargs):
    source = PAGES.get(page.file.src_uri)
    if source is None:
        return markdown
    return _site_links((ROOT / source).read_text(encoding="utf-8"))
