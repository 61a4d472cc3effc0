"""Benchmarks write their tables into docs pages that other scripts and people also edit: each
owns one `## ` section and replaces only that, keeping everything else on the page."""

from __future__ import annotations

from pathlib import Path


def replace_section(page: Path, heading: str, text: str, *, new_page: str) -> None:
    """Replace the section that starts with `heading` by `text` (or append it); `new_page` is
    the page's opening when the file does not exist yet."""
    current = page.read_text() if page.exists() else new_page
    start = current.find(f"\n{heading}")
    if start == -1:
        updated = current.rstrip("\n") + "\n\n" + text
    else:
        following = current.find("\n## ", start + 1)
        rest = current[following:] if following != -1 else ""
        updated = current[: start + 1] + text.rstrip("\n") + "\n" + rest
    page.write_text(updated)
