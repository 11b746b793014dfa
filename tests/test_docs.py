"""The documentation has no dangling references: every relative link in README.md and docs/ points at a file that
exists (and at a heading that exists when it names one), and every `docs/<file>.md#<anchor>` cited in the code,
the recipes or the benchmarks resolves. Users have only the repository, so nothing may cite a file outside it."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
CITATION = re.compile(r"docs/([A-Za-z0-9_.-]+\.md)(#[A-Za-z0-9_-]+)?")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, markup and punctuation other than '-' and '_' dropped,
    spaces to '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(markdown: Path) -> set[str]:
    found, in_code = set(), False
    for line in markdown.read_text().splitlines():
        if line.lstrip().startswith("```"):
            in_code = not in_code
        elif not in_code and (match := HEADING.match(line)):
            found.add(slug(match.group(1)))
    return found


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", ROOT / "BENCHMARKS.md", *sorted(DOCS.glob("*.md"))]


def cited_files() -> list[Path]:
    roots = [ROOT / "src", ROOT / "benchmarks", ROOT / "recipes", ROOT / "tests", ROOT / "configs"]
    return [p for r in roots for p in r.rglob("*") if p.is_file() and p.suffix in {".py", ".yaml", ".yml", ".toml"}]


def test_slug_follows_github() -> None:
    assert slug("T-GRPO") == "t-grpo"
    assert slug("Frame and pixel budgets") == "frame-and-pixel-budgets"
    assert slug("`framethink inspect`: what reaches the model") == "framethink-inspect-what-reaches-the-model"
    assert slug("DAPO (clip-higher, token mean)") == "dapo-clip-higher-token-mean"


def test_docs_folder_exists_and_readme_links_into_it() -> None:
    assert DOCS.is_dir()
    readme_links = {link for link in LINK.findall((ROOT / "README.md").read_text())}
    assert any(link.startswith("docs/") for link in readme_links)


@pytest.mark.parametrize("page", markdown_files(), ids=lambda p: p.name)
def test_every_relative_link_resolves(page: Path) -> None:
    dangling = []
    for link in LINK.findall(page.read_text()):
        if re.match(r"^[a-z]+:", link):  # http(s), mailto: not checked offline
            continue
        target, _, anchor = link.partition("#")
        path = (page.parent / target).resolve() if target else page
        if not path.exists():
            dangling.append(link)
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            dangling.append(link)
    assert not dangling, f"{page.relative_to(ROOT)}: dangling links {dangling}"


def test_every_docs_citation_in_code_resolves() -> None:
    dangling = []
    for file in cited_files():
        if file == Path(__file__):
            continue
        for number, line in enumerate(file.read_text(errors="replace").splitlines(), 1):
            for name, anchor in CITATION.findall(line):
                doc = DOCS / name
                if not doc.is_file() or (anchor and anchor[1:] not in anchors(doc)):
                    dangling.append(f"{file.relative_to(ROOT)}:{number}: docs/{name}{anchor}")
    assert not dangling, "dangling docs citations:\n" + "\n".join(dangling)


def test_nothing_cites_files_outside_the_repository() -> None:
    outside = re.compile(r"\bSPEC\.md|\bSPEC( section| §)?\s*\d|ENVIRONMENT\.md|REVIEW\.md|\.\./shared")
    offenders = []
    for file in cited_files() + markdown_files():
        if file == Path(__file__):
            continue
        for number, line in enumerate(file.read_text(errors="replace").splitlines(), 1):
            if outside.search(line):
                offenders.append(f"{file.relative_to(ROOT)}:{number}: {line.strip()[:80]}")
    assert not offenders, "citations of files users do not have:\n" + "\n".join(offenders)
