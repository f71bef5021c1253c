"""Reading a PDF as an auditor's tools do: every word with its box, from poppler's ``pdftotext -bbox``
(``make system-packages`` installs poppler-utils). Used by the evidence report's tests."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from html import unescape
from pathlib import Path

MM = 72 / 25.4  # PDF points per millimetre
MARGIN_MM = 10  # fpdf2's default left and right margins


@dataclass(frozen=True)
class Word:
    page: int
    x_min: float
    y_min: float
    x_max: float
    y_max: float
    text: str


@dataclass(frozen=True)
class Page:
    width: float
    height: float
    words: list[Word]


_PAGE = re.compile(r'<page width="([\d.]+)" height="([\d.]+)">(.*?)</page>', re.S)
_WORD = re.compile(r'<word xMin="([\d.]+)" yMin="([\d.]+)" xMax="([\d.]+)" yMax="([\d.]+)">(.*?)</word>', re.S)


def pdf_pages(pdf: bytes, folder: Path) -> list[Page]:
    """Every word of every page with its box, from ``pdftotext -bbox`` (points, origin top left)."""
    source = folder / "report.pdf"
    source.write_bytes(pdf)
    layout = subprocess.run(
        ["pdftotext", "-bbox", str(source), "-"], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    pages = []
    for number, (width, height, body) in enumerate(_PAGE.findall(layout), start=1):
        words = [
            Word(number, float(a), float(b), float(c), float(d), unescape(text))
            for a, b, c, d, text in _WORD.findall(body)
        ]
        pages.append(Page(float(width), float(height), words))
    return pages


def lines_of(page: Page) -> list[str]:
    """The page's words joined into lines (same baseline), top to bottom."""
    rows: dict[int, list[Word]] = {}
    for word in page.words:
        rows.setdefault(round(word.y_max), []).append(word)
    return [" ".join(w.text for w in sorted(row, key=lambda w: w.x_min)) for _, row in sorted(rows.items())]


def body_lines(pages: list[Page]) -> list[str]:
    """All lines in reading order, without each page's running header and footer."""
    lines: list[str] = []
    for page in pages:
        lines.extend(line for line in lines_of(page) if not _running(line))
    return lines


def _running(line: str) -> bool:
    return line.startswith("phigate evidence bundle export-") or bool(re.fullmatch(r"Page \d+ of \d+", line))


def assert_laid_out(pages: list[Page]) -> None:
    """Every word within the page's printable area; no page without body text."""
    assert pages, "the PDF has no pages"
    for page in pages:
        left, right = MARGIN_MM * MM - 1, page.width - MARGIN_MM * MM + 1
        for word in page.words:
            assert left <= word.x_min and word.x_max <= right, f"page {word.page}: {word.text!r} outside the margins"
            assert word.y_min >= 0 and word.y_max <= page.height, f"page {word.page}: {word.text!r} off the page"
        body = [line for line in lines_of(page) if not _running(line)]
        assert body, f"page {pages.index(page) + 1} is blank"
