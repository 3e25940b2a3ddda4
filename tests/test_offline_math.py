"""The HTML renders math offline: a tiny Jupyter Book built with the project's parse and sphinx
settings (from _config.yml) loads MathJax from _build, never from a CDN."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent

PAGE = r"""# Math

Inline $\sigma(x)^2$ and displayed:

$$
\mathrm{d}X_t = \mu(X_t)\,\mathrm{d}t + \sigma(X_t)\,\mathrm{d}W_t
$$

\begin{align}
a &= b + c
\end{align}
"""


def test_the_book_loads_mathjax_from_build_not_from_a_cdn(tmp_path):
    project = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert "sphinx-mathjax-offline" in project["sphinx"]["extra_extensions"]
    config = {
        "title": "math",
        "execute": {"execute_notebooks": "off"},
        "parse": project["parse"],
        "sphinx": project["sphinx"],
        "bibtex_bibfiles": project["bibtex_bibfiles"],
    }
    book = tmp_path / "book"
    book.mkdir()
    (book / "_config.yml").write_text(yaml.safe_dump(config))
    (book / "_toc.yml").write_text("format: jb-book\nroot: index\n")
    (book / "index.md").write_text(PAGE)
    for bib in project["bibtex_bibfiles"]:
        shutil.copy(ROOT / bib, book / bib)

    result = subprocess.run(
        [str(Path(sys.executable).parent / "jupyter-book"), "build", str(book), "-W", "-n"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]

    html = book / "_build" / "html"
    page = (html / "index.html").read_text()
    assert "\\sigma" in page  # the math reaches the page, for MathJax to render
    sources = re.findall(r'<script[^>]*\bsrc="([^"]*mathjax[^"]*)"', page, flags=re.I)
    assert sources == ["_static/mathjax/tex-chtml.js"], sources
    assert (html / sources[0]).is_file()
    assert (html / "_static" / "mathjax" / "output" / "chtml" / "fonts" / "woff-v2").is_dir()
    assert not re.search(r"https?://[^\"']*mathjax", page, flags=re.I)
