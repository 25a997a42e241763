"""The README starts in one screen and its docs/ pages hold together: the README stays short,
keeps the two set-up commands (CI runs its test command) and the sample-output markers, and
every relative link in README.md and docs/*.md leads to a file this checkout tracks (and to
a heading there, where the link names one). Reads files only: no torch, no trial."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"

MAX_README_LINES = 200  # one screen of what detcost is, the set-up, a sample answer and links
INSTALL_AND_RUN = "python -m pip install -e . && detcost run"
INSTALL_AND_TEST = "python -m pip install -e '.[test]' && python -m pytest"  # .ci/run runs this command
# Pages another change adds; a link to one is let through only while the page is absent.
PENDING = {"docs/report-screens.md"}  # "What the report looks like", screenshots of the report

LINK = re.compile(r"\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def _pages() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def _tracked() -> set[str] | None:
    """Paths git tracks here (None outside a git checkout: then a file that exists will do)."""
    try:
        out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return set(out.splitlines())


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text())
    return {_slug(line.lstrip("#")) for line in text.splitlines() if line.startswith("#")}


def _links(page: Path) -> list[str]:
    """Relative link targets outside code blocks (no scheme such as https: or mailto:)."""
    text = FENCE.sub("", page.read_text())
    return [t for t in LINK.findall(text) if not re.match(r"[a-z]+:", t)]


def test_the_readme_fits_in_about_one_screen():
    lines = README.read_text().count("\n")
    assert lines < MAX_README_LINES, f"README.md has {lines} lines; move a topic to docs/"


def test_the_readme_keeps_the_two_set_up_commands():
    lines = README.read_text().splitlines()
    assert any(INSTALL_AND_RUN in line for line in lines)
    assert INSTALL_AND_TEST in lines


def test_the_readme_keeps_the_sample_output_markers_in_order():
    text = README.read_text()
    begin, end = text.find("<!-- sample-output:begin -->"), text.find("<!-- sample-output:end -->")
    assert 0 <= begin < end


@pytest.mark.parametrize("page", _pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_leads_to_a_tracked_file_and_heading(page):
    tracked = _tracked()
    broken = []
    for target in _links(page):
        path, _, fragment = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        rel = dest.relative_to(ROOT).as_posix() if dest.is_relative_to(ROOT) else str(dest)
        if rel in PENDING and not dest.exists():
            continue
        is_dir = dest.is_dir()
        known = dest.exists() if tracked is None or is_dir else rel in tracked
        if not known:
            broken.append(f"{target}: no such file in this checkout")
        elif fragment and dest.suffix == ".md" and fragment not in _anchors(dest):
            broken.append(f"{target}: no heading #{fragment} in {rel}")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


def test_every_docs_page_is_reachable_from_the_readme():
    linked = set()
    for page in (README, DOCS / "README.md"):
        for target in _links(page):
            path = target.partition("#")[0]
            if path:
                linked.add((page.parent / path).resolve())
    assert (DOCS / "README.md").resolve() in linked, "README.md does not link docs/README.md"
    missing = [p.name for p in sorted(DOCS.glob("*.md")) if p.resolve() not in linked]
    assert not missing, f"docs pages neither README.md nor docs/README.md links: {missing}"
