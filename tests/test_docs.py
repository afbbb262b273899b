"""
The README and docs/ read as a markdown parser (markdown-it-py, as GitHub's
renderer does) reads them: every table whole, every heading an anchor of
its own, every relative link and anchor pointing at something that exists.
"""

from __future__ import annotations

import glob
import os
import unicodedata
from typing import Iterator
from urllib.parse import unquote, urlsplit

from markdown_it import MarkdownIt
from markdown_it.rules_block.table import escapedSplit
from markdown_it.token import Token
from twisted.trial.unittest import SynchronousTestCase

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DOCUMENTS = sorted(
    [os.path.join(ROOT, "README.md"), *glob.glob(os.path.join(ROOT, "docs", "*.md"))]
)


def parse(path: str) -> tuple[list[str], list[Token]]:
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    return text.splitlines(), MarkdownIt("commonmark").enable("table").parse(text)


def cells(line: str) -> list[str]:
    """
    A table row's cells, split as the parser's table rule splits them.
    """
    columns = escapedSplit(line.strip())
    if columns and columns[0] == "":
        columns.pop(0)
    if columns and columns[-1] == "":
        columns.pop()
    return columns


def plain_text(inline: Token) -> str:
    return "".join(
        child.content for child in inline.children or () if child.type in ("text", "code_inline")
    )


def anchor(heading: str) -> str:
    """
    The anchor GitHub gives a heading: lower case, punctuation dropped,
    spaces made hyphens.
    """
    kept = []
    for character in heading.strip().lower():
        if character in " -_" or unicodedata.category(character)[0] in "LN":
            kept.append("-" if character == " " else character)
    return "".join(kept)


def headings(tokens: list[Token]) -> Iterator[tuple[int, str]]:
    for index, token in enumerate(tokens):
        if token.type == "heading_open":
            assert token.map is not None
            yield token.map[0] + 1, plain_text(tokens[index + 1])


def links(tokens: list[Token]) -> Iterator[tuple[int, str]]:
    line = 0
    for token in tokens:
        if token.map is not None:
            line = token.map[0] + 1
        for child in token.children or ():
            if child.type == "link_open":
                yield line, str(child.attrs["href"])
            elif child.type == "image":
                yield line, str(child.attrs["src"])


def where(path: str, line: int) -> str:
    return f"{os.path.relpath(path, ROOT)}:{line}"


class DocumentTests(SynchronousTestCase):
    def test_the_documents_are_found(self) -> None:
        names = {os.path.relpath(p, ROOT) for p in DOCUMENTS}
        self.assertIn("README.md", names)
        self.assertIn(os.path.join("docs", "configuration.md"), names)

    def test_no_table_row_is_left_outside_its_table(self) -> None:
        """
        A blank line ends a table: rows after it become a paragraph of
        pipes.  The blank line that split docs/configuration.md's session
        table is what this catches.
        """
        stray = []
        for path in DOCUMENTS:
            lines, tokens = parse(path)
            for token in tokens:
                if token.type == "paragraph_open" and token.map is not None:
                    if lines[token.map[0]].lstrip().startswith("|"):
                        stray.append(where(path, token.map[0] + 1))
        self.assertEqual(stray, [])

    def test_every_table_row_has_its_header_s_columns(self) -> None:
        wrong = []
        tables = 0
        for path in DOCUMENTS:
            lines, tokens = parse(path)
            width = 0
            for token in tokens:
                if token.type == "table_open":
                    tables += 1
                    width = 0
                if token.type == "tr_open" and token.map is not None:
                    count = len(cells(lines[token.map[0]]))
                    if width == 0:
                        width = count
                    elif count != width:
                        wrong.append(f"{where(path, token.map[0] + 1)}: {count} cells, not {width}")
        self.assertEqual(wrong, [])
        self.assertGreater(tables, 10)

    def test_headings_are_unique_within_a_document(self) -> None:
        repeated = []
        for path in DOCUMENTS:
            seen: dict[str, int] = {}
            for line, text in headings(parse(path)[1]):
                key = anchor(text)
                if key in seen:
                    repeated.append(f"{where(path, line)}: {text!r} (also line {seen[key]})")
                seen.setdefault(key, line)
        self.assertEqual(repeated, [])

    def test_relative_links_and_their_anchors_resolve(self) -> None:
        broken = []
        anchors_of: dict[str, set[str]] = {}

        def anchors(path: str) -> set[str]:
            if path not in anchors_of:
                anchors_of[path] = {anchor(t) for _, t in headings(parse(path)[1])}
            return anchors_of[path]

        checked = 0
        for path in DOCUMENTS:
            for line, href in links(parse(path)[1]):
                parts = urlsplit(href)
                if parts.scheme or parts.netloc:
                    continue  # the web is not reachable from here
                checked += 1
                target = path
                if parts.path:
                    target = os.path.normpath(
                        os.path.join(os.path.dirname(path), unquote(parts.path))
                    )
                    if not target.startswith(ROOT + os.sep) or not os.path.exists(target):
                        broken.append(f"{where(path, line)}: {href} (no such file)")
                        continue
                if parts.fragment:
                    if not target.endswith(".md"):
                        broken.append(f"{where(path, line)}: {href} (anchor in a non-markdown file)")
                    elif unquote(parts.fragment) not in anchors(target):
                        broken.append(f"{where(path, line)}: {href} (no such heading)")
        self.assertEqual(broken, [])
        self.assertGreater(checked, 5)

    def test_the_checks_see_a_split_table_and_a_dead_link(self) -> None:
        """
        The parser-based checks above can fail: a made-up document with the
        faults they look for is caught.
        """
        text = (
            "# A\n\n## Cost\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n| 3 | 4 |\n\n"
            "## Cost\n\n[gone](nowhere.md) [here](#cost) [missing](#nothing)\n"
        )
        lines = text.splitlines()
        tokens = MarkdownIt("commonmark").enable("table").parse(text)
        stray = [
            t.map[0] for t in tokens
            if t.type == "paragraph_open" and t.map and lines[t.map[0]].startswith("|")
        ]
        self.assertEqual(stray, [8])
        self.assertEqual([anchor(t) for _, t in headings(tokens)], ["a", "cost", "cost"])
        self.assertEqual(
            [href for _, href in links(tokens)], ["nowhere.md", "#cost", "#nothing"]
        )
        self.assertEqual(cells("| x | `y\\|z` | w |"), [" x ", " `y|z` ", " w "])
        self.assertEqual(anchor("Open files and the concurrency cap"), "open-files-and-the-concurrency-cap")
        self.assertEqual(anchor("`store.*` and `session`: 2"), "store-and-session-2")
