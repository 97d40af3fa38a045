"""The book: chapter structure, smoke execution, failures that say where, and a real browser."""

import os
import re
import shutil
import subprocess
import sys

import nbformat
import pytest
from conftest import ROOT

from flatness.book import build as book


def test_every_chapter_is_a_myst_notebook_with_one_parameters_cell():
    names = book.chapters(ROOT)
    assert "logreg" in names
    for name in names:
        source = ROOT / "book" / f"{name}.md"
        head = source.read_text().split("---")[1]
        assert "jupytext" in head and "format_name: myst" in head, name
        assert "name: python3" in head, name
        notebook = book.read_chapter(source)
        assert len(book.parameters_cells(notebook)) == 1, name
        assert {"profile", "seeds", "dataset"} <= set(book.chapter_parameters(name, ROOT)), name


def test_plain_pages_have_no_code_and_nothing_is_left_out_of_the_toc():
    pages = book.toc_files(ROOT)
    for page in book.PLAIN_PAGES:
        assert page in pages
        assert "{code-cell}" not in (ROOT / f"{page}.md").read_text()
    on_disk = {f"book/{p.stem}" for p in (ROOT / "book").glob("*.md")}
    assert on_disk == set(pages)
    assert not list((ROOT / "book").glob("*.ipynb"))


def test_smoke_book_executes_every_chapter_and_builds(smoke_book):
    html = smoke_book.parent
    assert smoke_book.is_file()
    for name in book.chapters(ROOT):
        executed = nbformat.read(html.parent / "executed" / f"{name}.ipynb", as_version=4)
        errors = [
            o
            for c in executed.cells
            for o in c.get("outputs", [])
            if o.get("output_type") == "error"
        ]
        assert not errors, name
        page = (html / "book" / f"{name}.html").read_text()
        assert "Traceback" not in page
    status = (html / "book" / "status.html").read_text()
    assert "passed" in status and "smoke" in status


def test_the_logreg_page_shows_figures_glued_numbers_and_a_verdict(smoke_book):
    page = (smoke_book.parent / "book" / "logreg.html").read_text()
    assert page.count("<figure") >= 3
    # figures are numbered through the whole book: three numbered figures on this page
    assert len(re.findall(r"Fig\. \d+", page)) >= 3
    assert "profile <strong>smoke</strong>" in page
    assert any(v in page for v in ("not reproduced", "partly reproduced", "reproduced"))
    assert "mathjax/tex-chtml.js" in page  # formulas render offline


BROKEN_CHAPTER = """---
jupytext:
  text_representation:
    extension: .md
    format_name: myst
kernelspec:
  display_name: Python 3
  language: python
  name: python3
---

# Broken

```{code-cell} ipython3
:tags: [parameters]

profile = "cpu"
seeds = None
dataset = None
```

```{code-cell} ipython3
def inner():
    raise ValueError("the chapter broke here")

inner()
```
"""


@pytest.fixture
def broken_checkout(tmp_path):
    root = tmp_path / "checkout"
    (root / "book").mkdir(parents=True)
    for name in ("_config.yml",):
        shutil.copy2(ROOT / name, root / name)
    (root / "_toc.yml").write_text(
        "format: jb-book\nroot: book/index\nchapters:\n  - file: book/broken\n"
    )
    (root / "book" / "index.md").write_text("# Index\n")
    (root / "book" / "broken.md").write_text(BROKEN_CHAPTER)
    return root


def test_a_failing_cell_fails_with_the_chapter_name_and_traceback(
    broken_checkout, monkeypatch, tmp_path
):
    monkeypatch.chdir(broken_checkout)
    with pytest.raises(book.ChapterError) as err:
        book.build_book(profile="smoke", progress=False)
    message = str(err.value)
    assert "chapter broken failed (profile smoke)" in message
    assert "ValueError: the chapter broke here" in message and "inner()" in message
    assert not (broken_checkout / "_build" / "html").exists()
    done = subprocess.run(
        [sys.executable, "-m", "flatness", "chapter", "broken", "--profile", "smoke"],
        capture_output=True,
        text=True,
        cwd=broken_checkout,
        env={**os.environ, "FLATNESS_RESULTS": str(tmp_path / "results")},
    )
    assert done.returncode == 1
    assert "chapter broken failed" in done.stderr and "ValueError" in done.stderr


def chromium_driver():
    """A headless Chromium driven by Debian's chromedriver; installed first under CI."""
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        if os.environ.get("CI") != "true":
            pytest.skip(
                "no chromium/chromedriver here (apt-get install chromium chromium-driver); CI installs them"
            )
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "chromium", "chromium-driver"], check=True
        )
        chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,2400",
    ):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(driver), options=options)


def test_a_real_browser_opens_every_page(smoke_book):
    from selenium.webdriver.support.ui import WebDriverWait

    html = smoke_book.parent
    browser = chromium_driver()
    try:
        browser.get(smoke_book.as_uri())  # the root page redirects to the book's first page
        WebDriverWait(browser, 20).until(lambda b: b.current_url.endswith("book/index.html"))
        names = ("index", *book.chapters(ROOT), "status", "troubleshooting", "bibliography")
        pages = [html / "book" / f"{n}.html" for n in names]
        for page in pages:
            browser.get(page.as_uri())
            WebDriverWait(browser, 20).until(
                lambda b: b.execute_script("return document.readyState") == "complete"
            )
            text = browser.execute_script("return document.body.innerText")
            assert "Traceback" not in text and len(text) > 200, page
            images = browser.execute_script(
                "return Array.from(document.images).map(i => [i.src, i.complete && i.naturalWidth > 0])"
            )
            broken = [src for src, ok in images if not ok]
            assert not broken, (page, broken)
            alts = browser.execute_script(
                "return Array.from(document.querySelectorAll('figure img')).map(i => i.alt)"
            )
            assert all(a and not a.endswith(".png") for a in alts), (page, alts)
        browser.get((html / "book" / "logreg.html").as_uri())
        figures = browser.execute_script("return document.querySelectorAll('figure img').length")
        assert figures >= 3
        shot = html.parent / "screenshot-logreg.png"
        browser.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
        copy = ROOT / "_build" / "screenshot-logreg.png"  # kept for people to look at
        copy.parent.mkdir(exist_ok=True)
        shutil.copy2(shot, copy)
    finally:
        browser.quit()


def test_figures_are_svg_shown_at_their_own_size(smoke_book):
    """Figures stay sharp at any zoom (SVG), and the column shows them at the size their fonts
    were chosen for (:data:`flatness.analysis.plotting.FONT`): not shrunk, not cut off."""
    from selenium.webdriver.support.ui import WebDriverWait

    html = smoke_book.parent
    browser = chromium_driver()
    try:
        shown = 0
        for name in book.chapters(ROOT):
            browser.get((html / "book" / f"{name}.html").as_uri())
            WebDriverWait(browser, 20).until(
                lambda b: b.execute_script("return document.readyState") == "complete"
            )
            figures = browser.execute_script(
                "return Array.from(document.querySelectorAll('figure img')).map(i => "
                "[i.src, i.clientWidth, i.naturalWidth, i.closest('article').clientWidth])"
            )
            for src, width, natural, column in figures:
                assert src.endswith(".svg"), (name, src)
                assert width >= 0.9 * natural and width <= column, (name, src, width, natural)
            shown += len(figures)
        assert shown >= 10
    finally:
        browser.quit()
