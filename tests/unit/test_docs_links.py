"""Every relative link of the README, docs/ and bench/README.md leads to a file of the repo, and an anchor into one
of the repo's Markdown files to one of its headings (as GitHub names them). Links inside code are not links."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = sorted([ROOT / "README.md", ROOT / "bench" / "README.md", *(ROOT / "docs").glob("*.md")])

_FENCE = re.compile(r"^ {0,3}(```|~~~).*?^ {0,3}\1[^\n]*$", re.M | re.S)
_CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1", re.S)
_INLINE = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFERENCE = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s.*)?$", re.M)
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def prose(markdown: str) -> str:
    """The text outside fenced code blocks and code spans."""
    return _CODE_SPAN.sub("", _FENCE.sub("", markdown))


def links(markdown: str) -> list[str]:
    text = prose(markdown)
    return [*_INLINE.findall(text), *_REFERENCE.findall(text)]


def anchors(markdown: str) -> set[str]:
    """GitHub's anchors for a page's headings: lower case, punctuation dropped, spaces as hyphens, a repeat
    numbered (-1, -2, ...)."""
    seen: dict[str, int] = {}
    found = set()
    for heading in re.findall(r"^ {0,3}#{1,6}\s+(.+?)\s*#*\s*$", _FENCE.sub("", markdown), re.M):
        base = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        n = seen.get(base, 0)
        seen[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
    return found


def broken_links(page: Path, root: Path = ROOT) -> list[str]:
    """Each relative link of `page` that leads nowhere, with the reason."""
    broken = []
    for target in links(page.read_text(encoding="utf-8")):
        if _SCHEME.match(target) or target.startswith("//"):
            continue  # a URL: not this test's business (no network in tests)
        path_part, _, anchor = target.partition("#")
        path_part = path_part.split("?", 1)[0]
        dest = (page.parent / path_part).resolve() if path_part else page
        if not dest.is_relative_to(root.resolve()):
            broken.append(f"{target}: outside the repo")
        elif not dest.exists():
            broken.append(f"{target}: no such file ({dest.relative_to(root.resolve())})")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest.read_text(encoding="utf-8")):
            broken.append(f"{target}: no heading with the anchor #{anchor} in {dest.relative_to(root.resolve())}")
    return broken


def test_the_pages_exist() -> None:
    assert (ROOT / "docs" / "README.md") in PAGES and len(PAGES) > 3


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path) -> None:
    broken = broken_links(page)
    assert not broken, f"{page.relative_to(ROOT)} has broken links:\n" + "\n".join(broken)


def test_a_broken_link_is_found(tmp_path: Path) -> None:
    (tmp_path / "there.md").write_text("# A heading\n\ntext\n", encoding="utf-8")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n[fine](there.md) [fine too](there.md#a-heading) [web](https://example.org/x) [self](#page)\n"
        "[gone](missing.md) [bad anchor](there.md#no-such-heading) ![image](img/none.png)\n"
        "[out](../../etc/passwd)\n\n[ref]: nowhere/file.md\n\n"
        "`[in code](nowhere.md)`\n\n```\n[in a fence](nowhere.md)\n```\n",
        encoding="utf-8",
    )
    found = broken_links(page, root=tmp_path)
    assert [f.split(":")[0] for f in found] == [
        "missing.md",
        "there.md#no-such-heading",
        "img/none.png",
        "../../etc/passwd",
        "nowhere/file.md",
    ]


def test_anchors_follow_github() -> None:
    text = "# ragloop\n## The test suite (`make test`)\n## A: b\n## A: b\n```\n# not a heading\n```\n"
    assert anchors(text) == {"ragloop", "the-test-suite-make-test", "a-b", "a-b-1"}
