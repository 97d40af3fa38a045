"""Every page of the rendered smoke book as a reader sees it: no unrendered TeX, no table cell
that reads NaN, no raw identifier of the display-name table in the text.

The pages are those of the session's one smoke build (``smoke_book`` in ``conftest.py``). What
a reader does not read as prose is left out: code (``<pre>``, ``<code>``), input cells (shown or
hidden), math that MathJax typesets, scripts and styles, and the theme's navigation.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from conftest import ROOT

from flatness.analysis import names
from flatness.book import build as book

#: every page of the book, as its HTML file under ``html/``
PAGES = [f"{page}.html" for page in book.toc_files(ROOT)]
#: elements whose text is code or typeset by MathJax
SKIPPED_TAGS = {"pre", "code", "kbd", "samp", "script", "style", "svg", "mjx-container"}
#: classes of elements whose text is code, an input cell or math
SKIPPED_CLASSES = {"cell_input", "math", "highlight", "MathJax", "MathJax_Display"}
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source"}
VOID |= {"track", "wbr"}
#: TeX that MathJax did not get: a command, a dollar-delimited formula, a sub- or superscript
#: group, or a norm
UNRENDERED = re.compile(
    r"\\[A-Za-z]+|\$(?=\S)[^$\n]{1,200}(?<=\S)\$|[_^]\{|\\\||\\[()\[\]]",
)
#: what a table shows where a number is missing and nobody said why
EMPTY_CELL = re.compile(r"(?i)\b(nan|nat)\b|^\s*(none|<na>|null)\s*$")


class Reading(HTMLParser):
    """The text a reader reads in a page's article: ``prose`` (a list of pieces) and
    ``cells`` (the text of each table cell)."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack: list[tuple[str, bool]] = []  # (tag, skipped) of the open elements
        self.article = 0  # depth inside <article>, the page's own content
        self.prose: list[str] = []
        self.cells: list[str] = []
        self._cell: list[str] | None = None

    @property
    def skipping(self) -> bool:
        return any(skipped for _, skipped in self.stack)

    def handle_starttag(self, tag, attrs):
        if tag in VOID:
            self.prose.append(" ")  # <br/> and the like part words
            return
        classes = set((dict(attrs).get("class") or "").split())
        skipped = tag in SKIPPED_TAGS or bool(classes & SKIPPED_CLASSES)
        self.stack.append((tag, skipped))
        if tag == "article":
            self.article += 1
        if tag in ("td", "th") and self.article and not self.skipping:
            self._cell = []

    def handle_endtag(self, tag):
        if tag in VOID or not any(t == tag for t, _ in self.stack):
            return
        while self.stack:
            open_tag, _ = self.stack.pop()
            if open_tag == "article":
                self.article -= 1
            if open_tag in ("td", "th") and self._cell is not None:
                self.cells.append(" ".join("".join(self._cell).split()))
                self._cell = None
            if open_tag == tag:
                break
        self.prose.append(" ")  # a block's end is a break between words

    def handle_data(self, data):
        if not self.article or self.skipping:
            if self.article:
                self.prose.append(" ")
            return
        self.prose.append(data)
        if self._cell is not None:
            self._cell.append(data)


def read(page: Path) -> Reading:
    reading = Reading()
    reading.feed(page.read_text())
    assert reading.prose, f"{page}: no article found"
    return reading


def text(reading: Reading) -> str:
    return " ".join("".join(reading.prose).split())


def around(text: str, start: int, end: int, width: int = 40) -> str:
    return f"...{text[max(0, start - width) : end + width]}..."


def unrendered_math(page: Path) -> list[str]:
    """Each piece of TeX in the page's text outside MathJax's reach, with its context."""
    words = text(read(page))
    return [around(words, m.start(), m.end()) for m in UNRENDERED.finditer(words)]


def empty_cells(page: Path) -> list[str]:
    """Each table cell of the page that reads NaN, None or the like."""
    return [cell for cell in read(page).cells if EMPTY_CELL.search(cell)]


def raw_identifiers(page: Path) -> list[str]:
    """Each raw identifier of :mod:`flatness.analysis.names` in the page's text, in context."""
    words = text(read(page))
    found = []
    for word in dict.fromkeys(names.raw_identifiers(words)):
        at = re.search(rf"(?<![\w+\-]){re.escape(word)}(?![\w+\-])", words)
        found.append(f"{word!r} in {around(words, at.start(), at.end(), 30)}")
    return found


@pytest.fixture(scope="module")
def html(smoke_book) -> Path:
    return smoke_book.parent


@pytest.mark.parametrize("page", PAGES)
def test_no_page_shows_unrendered_math(html, page):
    found = unrendered_math(html / page)
    assert not found, f"{page}: TeX outside math, not typeset: {found}"


@pytest.mark.parametrize("page", PAGES)
def test_no_table_cell_reads_nan(html, page):
    found = empty_cells(html / page)
    assert not found, f"{page}: table cells without a value or a reason: {found}"


#: pages written in words; the API page's names and arguments are identifiers by nature
PROSE = [page for page in PAGES if page != "book/api.html"]


@pytest.mark.parametrize("page", PROSE)
def test_no_page_shows_a_raw_identifier(html, page):
    found = raw_identifiers(html / page)
    assert not found, f"{page}: raw identifiers where a reader expects words: {found}"


#: pages whose every table fits the text column at 1280 px, with no scrolling
FITTING = ("book/estimators.html", "book/logreg.html")
#: each table of the article that is wider than the box around it, and whether that box
#: scrolls (a table sticking out of an unscrolled box is cut off)
TOO_WIDE = """
return Array.from(document.querySelectorAll('article table')).map(t => {
  let box = t.parentElement;
  while (box.tagName !== 'ARTICLE' && !['auto', 'scroll'].includes(getComputedStyle(box).overflowX))
    box = box.parentElement;
  const edge = box.getBoundingClientRect().right;
  return [t.innerText.slice(0, 60), box.tagName !== 'ARTICLE', t.getBoundingClientRect().right > edge + 1];
}).filter(([text, scrolls, wide]) => wide);
"""


def test_no_table_is_cut_off_in_chromium_at_1280_px(html):
    """Every table fits the text column or scrolls sideways in its own box; the tables of
    :data:`FITTING` fit."""
    from selenium.webdriver.support.ui import WebDriverWait
    from test_book import chromium_driver

    browser = chromium_driver()  # 1280 px wide
    try:
        assert browser.execute_script("return window.innerWidth") == 1280
        cut, scrolled = {}, {}
        for page in PAGES:
            assert "tables.css" in (html / page).read_text(), page  # the book's table style
            browser.get((html / page).as_uri())
            WebDriverWait(browser, 20).until(
                lambda b: b.execute_script("return document.readyState") == "complete"
            )
            wide = browser.execute_script(TOO_WIDE)
            cut |= {page: [t for t, scrolls, _ in wide if not scrolls]} if wide else {}
            if page in FITTING and wide:
                scrolled[page] = [t for t, _, _ in wide]
        assert not any(cut.values()), f"tables cut off at the article's edge: {cut}"
        assert not scrolled, f"tables wider than the text column: {scrolled}"
    finally:
        browser.quit()


SAMPLE = """<html><body><nav>lambda_max in the navigation</nav><article class="bd-article">
<p>The trace $\\operatorname{Tr} H$ is \\(x\\) and <span class="math notranslate">\\(\\lambda\\)</span>.</p>
<div class="cell docutils container"><div class="cell_input docutils container">
<pre>weight_decay = 0.1  # lenet5</pre></div>
<div class="cell_output docutils container"><table><tr><th>λ_max</th><th>s.e.</th></tr>
<tr><td>1.0</td><td>nan</td></tr><tr><td>2.0</td><td>— (one probe)</td></tr></table></div></div>
<p>Trained <code>allcnn</code> on cifar100 with weight_decay<br/>and LeNet-5 on CIFAR-100.</p>
</article></body></html>"""


def test_the_scans_find_what_a_reader_would_trip_over(tmp_path):
    page = tmp_path / "page.html"
    page.write_text(SAMPLE)
    math = unrendered_math(page)
    assert len(math) == 3 and "\\operatorname" in math[0] and "\\(x" in math[1]  # $..$, \( \)
    assert empty_cells(page) == ["nan"]
    found = raw_identifiers(page)
    assert [f.split()[0] for f in found] == ["'cifar100'", "'weight_decay'"]
    page.write_text(SAMPLE.replace("$\\operatorname{Tr} H$", "Tr H").replace("\\(x\\)", "x"))
    assert unrendered_math(page) == []  # \lambda inside a math span is MathJax's


class Links(HTMLParser):
    """Every ``href`` and ``src`` of a page, and every ``id`` it defines."""

    def __init__(self):
        super().__init__()
        self.links, self.ids = [], set()

    def handle_starttag(self, tag, attrs):
        for key, value in attrs:
            if key in ("href", "src") and value:
                self.links.append(value)
            if key in ("id", "name") and value:
                self.ids.add(value)


def _links(page: Path) -> Links:
    parsed = Links()
    parsed.feed(page.read_text(errors="replace"))
    return parsed


def test_every_internal_link_and_anchor_resolves(html):
    """Every link from one page of the book to a file of the book (a page, an image, a
    download, a stylesheet) finds that file, and a link to a place in a page finds its id."""
    # the theme's template fragments under _static are not pages
    pages = sorted(p for p in html.rglob("*.html") if "_static" not in p.relative_to(html).parts)
    parsed = {p.resolve(): _links(p) for p in pages}
    broken = []
    for page, links in parsed.items():
        for link in links.links:
            if re.match(r"^(https?:|mailto:|data:|javascript:|//)", link):
                continue
            path, _, fragment = link.partition("#")
            target = (page.parent / path.split("?")[0]).resolve() if path else page
            if not target.exists():
                broken.append(f"{page.relative_to(html.resolve())}: {link}")
            elif fragment and target in parsed and fragment not in parsed[target].ids:
                broken.append(f"{page.relative_to(html.resolve())}: {link} (no such anchor)")
    assert len(pages) > 10 and not broken, broken[:20]


@pytest.mark.parametrize("name", book.chapters(ROOT))
def test_every_chapter_offers_its_notebook_its_source_and_a_colab_link(html, name):
    import nbformat

    page = html / "book" / f"{name}.html"
    links = _links(page).links
    downloads = {
        Path(link).name: (page.parent / link).resolve() for link in links if "_downloads" in link
    }
    notebook = nbformat.read(downloads[f"{name}.ipynb"], as_version=4)
    tags = [t for c in notebook.cells for t in c.metadata.get("tags", [])]
    assert "injected-parameters" in tags  # the parameters papermill injected
    assert any(c.get("outputs") for c in notebook.cells if c.cell_type == "code")
    first = notebook.cells[0]
    assert "google.colab" in first.source and first.metadata["tags"] == ["remove-cell"]
    source = downloads[f"{name}.md"].read_text()
    assert source == (ROOT / "book" / f"{name}.md").read_text()
    away = book.TakeAway.of(name, "smoke", ROOT)
    assert away.colab in links
    text = " ".join(re.sub(r"<[^>]+>", "", page.read_text()).split())
    assert "This page shows the smoke profile" in text
    assert away.command in text


def test_the_api_page_documents_every_public_estimator(html):
    from flatness import hessian

    text = (html / "book" / "api.html").read_text()
    for name in ("measure_all", "top_eigenvalues", "trace", "frobenius_norm", "exact_hessian"):
        assert f'id="flatness.hessian.{name}"' in text, name
        assert getattr(hessian, name).__doc__.split("\n")[0].split("``")[0][:20] in text
    assert "Raises" in text and "FlatnessError" in text


def test_the_api_page_documents_every_public_measure(html):
    from flatness import measures

    text = (html / "book" / "api.html").read_text()
    for name in measures.__all__:
        assert f'id="flatness.measures.{name}"' in text, name
