"""The documentation's links hold: every relative link names a file of the repository, every
#anchor names a heading of its target, and nothing links outside the repository.

Checked: README.md, docs/**/*.md, .github/**/*.md, and every README.md under sdk/ and k8s/.
A link is an inline link or image `[text](target)`, a reference definition `[ref]: target`,
an autolink `<scheme:...>`, a bare URL in prose (GitHub links those too), or an HTML `href`
or `src`. Code blocks and code spans are not links: a URL there is an example value.
Anchors follow GitHub's slugs: the heading's text without markup, lowercased, every
character but letters, digits, `_`, `-` and spaces dropped, spaces made `-`, and `-1`,
`-2`, ... added to repeated slugs. Explicit `<a id=...>` / `<a name=...>` anchors count too.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[2]

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1", re.S)
_INLINE = re.compile(
    r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]"  # [text], with one level of nested brackets
    r"\(\s*(<[^>]*>|(?:[^()\s]|\([^()\s]*\))*)"  # (target or (<target>
    r"(?:\s+(?:\"[^\"]*\"|'[^']*'|\([^()]*\)))?\s*\)"  # optional "title")
)
_DEFINITION = re.compile(r"^ {0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)", re.M)
_AUTOLINK = re.compile(r"<([A-Za-z][A-Za-z0-9+.-]{1,31}:[^<>\s]*)>")
_BARE_URL = re.compile(r"(?<![\w/(<\"'=])(?:https?|ftp)://[^\s<>()\[\]]+|\bwww\.[^\s<>()\[\]]+")
_HTML_ATTR = re.compile(r"<[A-Za-z][^>]*?\b(?:href|src)\s*=\s*[\"']([^\"']*)[\"']", re.I)
_HTML_ANCHOR = re.compile(r"<a\b[^>]*?\b(?:id|name)\s*=\s*[\"']([^\"']+)[\"']", re.I)
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_ATX = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")


def doc_files(root: Path) -> list[Path]:
    """The markdown files whose links are checked."""
    found: set[Path] = set()
    if (root / "README.md").is_file():
        found.add(root / "README.md")
    for pattern in ("docs/**/*.md", ".github/**/*.md", "sdk/**/README.md", "k8s/**/README.md"):
        found.update(p for p in root.glob(pattern) if p.is_file())
    return sorted(p for p in found if "node_modules" not in p.relative_to(root).parts)


def prose_lines(text: str) -> list[str]:
    """The lines of a markdown text with fenced code blocks blanked (line numbers kept)."""
    lines = text.splitlines()
    fence = ""
    for n, line in enumerate(lines):
        match = _FENCE.match(line)
        if fence:
            if match and match.group(1)[0] == fence[0] and len(match.group(1)) >= len(fence):
                fence = ""
            lines[n] = ""
        elif match:
            fence = match.group(1)
            lines[n] = ""
    return lines


def _plain_heading(text: str) -> str:
    text = re.sub(r"!?\[((?:[^\[\]]|\[[^\[\]]*\])*)\]\([^)]*\)", r"\1", text)  # links: text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML
    return text.replace("`", "")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's text (before de-duplication)."""
    text = _plain_heading(heading).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every anchor a markdown text defines: heading slugs (repeats numbered) and HTML ids."""
    seen: dict[str, int] = {}
    found: set[str] = set()
    lines = prose_lines(text)
    for n, line in enumerate(lines):
        heading = None
        atx = _ATX.match(line)
        if atx:
            heading = atx.group(2) or ""
        elif n > 0 and lines[n - 1].strip() and _SETEXT.match(line):
            previous = lines[n - 1]
            if not _ATX.match(previous) and not previous.lstrip().startswith(("-", "*", ">", "|")):
                heading = previous
        if heading is not None:
            base = slug(heading)
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    found.update(m.group(1) for m in _HTML_ANCHOR.finditer(text))
    return found


def link_targets(text: str) -> list[tuple[int, str]]:
    """(line number, target) of every link in a markdown text, code left out."""
    out: list[tuple[int, str]] = []
    for n, line in enumerate(prose_lines(text), start=1):
        if not line:
            continue
        prose = _CODE_SPAN.sub(lambda m: " " * len(m.group(0)), line)
        for pattern in (_INLINE, _AUTOLINK, _HTML_ATTR):
            out += [(n, m.group(1)) for m in pattern.finditer(prose)]
        out += [(n, m.group(0)) for m in _BARE_URL.finditer(_INLINE.sub(" ", prose))]
        out += [(n, m.group(1)) for m in _DEFINITION.finditer(prose)]
    return [(n, t[1:-1] if t.startswith("<") and t.endswith(">") else t) for n, t in out]


def problems(root: Path, path: Path) -> list[str]:
    """What is wrong with the links of one markdown file of the repository at `root`."""
    root = root.resolve()
    where = path.relative_to(root)
    found = []
    for line, target in link_targets(path.read_text(encoding="utf-8")):
        at = f"{where}:{line}: {target!r}"
        if not target:
            found.append(f"{at}: an empty link")
            continue
        if _SCHEME.match(target) or target.startswith(("//", "www.")):
            found.append(f"{at}: links outside the repository (write it as plain text)")
            continue
        if target.startswith("/"):
            found.append(f"{at}: an absolute path; link relative to {where.parent or '.'}/")
            continue
        file_part, _, anchor = target.partition("#")
        file_part = unquote(file_part.split("?", 1)[0])
        resolved = (path.parent / file_part).resolve() if file_part else path
        if not resolved.is_relative_to(root):
            found.append(f"{at}: points outside the repository")
            continue
        if not resolved.exists():
            found.append(f"{at}: {resolved.relative_to(root)} does not exist")
            continue
        if anchor:
            if resolved.suffix.lower() != ".md" or not resolved.is_file():
                found.append(f"{at}: an anchor into a file that is not markdown")
            elif unquote(anchor) not in anchors(resolved.read_text(encoding="utf-8")):
                found.append(f"{at}: no heading of {resolved.relative_to(root)} has this anchor")
    return found


def test_the_docs_are_found() -> None:
    files = {p.relative_to(ROOT).as_posix() for p in doc_files(ROOT)}
    assert {"README.md", "docs/README.md", "docs/architecture.md"} <= files


@pytest.mark.parametrize("path", doc_files(ROOT), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_links_resolve_inside_the_repository(path: Path) -> None:
    found = problems(ROOT, path)
    assert not found, "broken links:\n" + "\n".join(found)


# The checker itself, on a repository made for the test: each kind of broken link is found.


def test_github_slugs() -> None:
    assert slug("Leases and fencing") == "leases-and-fencing"
    assert slug("Model calls: `longline.llm`") == "model-calls-longlinellm"
    assert slug("Stalled workers, half-open connections") == "stalled-workers-half-open-connections"
    assert slug("What was tried, and what it bought") == "what-was-tried-and-what-it-bought"
    assert slug("`max_attempts` and B1's floor") == "max_attempts-and-b1s-floor"
    assert slug("[Links](x.md) in a heading") == "links-in-a-heading"
    assert anchors("# A\n\n## A\n\nB\n---\n\n<a id='here'></a>\n") == {"a", "a-1", "b", "here"}


def test_the_checker_finds_every_kind_of_broken_link(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# Title\n\n## Some section\n")
    readme = tmp_path / "README.md"
    readme.write_text(
        "# Top\n\n"
        "[fine](docs/a.md) [fine](docs/a.md#some-section) [fine](#top) [dir](docs)\n"
        "[missing](docs/b.md)\n"
        "[bad anchor](docs/a.md#no-such-section)\n"
        "[outside](../elsewhere/DESIGN.md)\n"
        "[web](https://example.com/page)\n"
        "see https://example.com/bare too\n"
        "[ref]: docs/missing.md\n"
        '<a href="http://example.com">x</a>\n'
        "[absolute](/docs/a.md)\n"
        "`[not a link](nowhere.md)` and `https://example.com` in code\n"
        "```\n[not a link](nowhere.md) https://example.com\n```\n"
    )
    found = problems(tmp_path, readme)
    expected = [
        (4, "docs/b.md does not exist"),
        (5, "no heading of docs/a.md has this anchor"),
        (6, "points outside the repository"),
        (7, "links outside the repository"),
        (8, "links outside the repository"),
        (9, "docs/missing.md does not exist"),
        (10, "links outside the repository"),
        (11, "an absolute path"),
    ]
    assert len(found) == len(expected), found
    for problem, (line, phrase) in zip(found, expected, strict=True):
        assert problem.startswith(f"README.md:{line}: ") and phrase in problem, problem
