"""The course as a static web site: ``python -m dllm_lesson site [--out DIR]``.

Turns the executed notebooks (their stored outputs; nothing is re-run) into one HTML page
each with nbconvert's JupyterLab template, plus an index page made from the README (the
syllabus), all in one folder that works offline:

- no CDN: the pages load no require.js, no widget manager and no mermaid; MathJax 2 is
  copied into ``assets/mathjax`` from the ``jupyter-server-mathjax`` package (its STIX web
  fonts included); plots are inline PNG/SVG; the fonts are the browser's own;
- de-masking players show their kernel-free animation: the widget view is dropped from
  each output so the page uses the ``text/html`` that ``viz.DemaskPlayer`` stores beside
  it (``DemaskPlayer.to_html``), and the notebook's saved widget state is not embedded;
- a navigation bar (course home, previous and next lesson) on every page.

Open ``DIR/index.html`` in a browser, or serve the folder
(``python -m http.server -d DIR``). Built and checked in headless Chromium by
``tests/test_site.py``.
"""

from __future__ import annotations

import argparse
import html
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ASSETS = Path(__file__).resolve().parent / "site_assets"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "widgets"
NOTEBOOK_NAME = re.compile(r"^(\d\d)_[A-Za-z0-9_]+\.ipynb$")
COURSE_TITLE = "Diffusion language models, hands on"

MATHJAX_CONFIG = r"""<script type="text/x-mathjax-config">
MathJax.Hub.Config({
  tex2jax: {inlineMath: [['$', '$'], ['\\(', '\\)']],
            displayMath: [['$$', '$$'], ['\\[', '\\]']],
            processEscapes: true, processEnvironments: true},
  TeX: {equationNumbers: {autoNumber: "AMS", useLabelIds: true}},
  "HTML-CSS": {availableFonts: [], preferredFont: null, webFont: "STIX-Web",
               imageFont: null, linebreaks: {automatic: true},
               styles: {"@font-face": {"font-family": "MathJax_Blank",
                                       src: "local('MathJax_Blank')"}}},
  displayAlign: "center", messageStyle: "none", showMathMenu: false
});
// the first typeset is over: say so (tests/test_site.py waits for it)
MathJax.Hub.Register.StartupHook("End", function () {
  document.body.setAttribute("data-mathjax", "done");
});
</script>
<script src="assets/mathjax/MathJax.js?config=TeX-AMS-MML_HTMLorMML-full,Safe"></script>"""


@dataclass
class Page:
    """One built page: the notebook it came from, its title and what it shows."""

    name: str            # e.g. "03_greedy_decoding"
    title: str
    path: Path
    animations: int = 0  # kernel-free de-masking players on the page
    widgets_dropped: int = 0


@dataclass
class Site:
    out: Path
    pages: list[Page] = field(default_factory=list)

    @property
    def index(self) -> Path:
        return self.out / "index.html"


def mathjax_dir() -> Path:
    """MathJax 2's files from the ``jupyter-server-mathjax`` package (a dev dependency)."""
    try:
        import jupyter_server_mathjax
    except ImportError:
        raise SystemExit(
            "the site needs MathJax from the jupyter-server-mathjax package: "
            "pip install -e '.[dev]' (or pip install jupyter-server-mathjax)"
        ) from None
    static = Path(jupyter_server_mathjax.__file__).resolve().parent / "static"
    if not (static / "MathJax.js").exists():
        raise SystemExit(f"jupyter-server-mathjax has no MathJax.js under {static}; "
                         "reinstall it (pip install --force-reinstall jupyter-server-mathjax)")
    return static


def course_notebooks(notebooks_dir: Path) -> list[Path]:
    """The numbered lesson notebooks (``NN_name.ipynb``) of ``notebooks_dir``, in order."""
    notebooks_dir = Path(notebooks_dir)
    if not notebooks_dir.is_dir():
        raise SystemExit(f"no notebooks folder at {notebooks_dir}; pass --notebooks DIR "
                         "(the folder that holds 00_welcome.ipynb ...)")
    found = sorted(p for p in notebooks_dir.iterdir() if NOTEBOOK_NAME.match(p.name))
    if not found:
        raise SystemExit(f"{notebooks_dir} holds no NN_name.ipynb notebooks")
    return found


def kernel_free(nb) -> tuple[int, int]:
    """Drop what needs a kernel from ``nb`` (in place): each output's widget view (the
    page then shows the output's next representation: a player's HTML animation) and the
    saved widget state. Returns (animations, widget views dropped)."""
    animations = dropped = 0
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            data = out.get("data")
            if not data:
                continue
            if WIDGET_VIEW in data:
                del data[WIDGET_VIEW]
                dropped += 1
            if "dllm-anim" in data.get("text/html", ""):
                animations += 1
    nb.metadata.pop(WIDGET_STATE, None)
    return animations, dropped


def notebook_title(nb, fallback: str) -> str:
    """The notebook's first Markdown heading, without the ``#``."""
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("#"):
                    return line.lstrip("#").strip()
    return fallback


def _link_notebooks(markup: str, built: set[str]) -> str:
    """``notebooks/NN_x.ipynb`` (and ``NN_x.ipynb``) links -> the built ``NN_x.html``."""
    def swap(m):
        name = m.group(2)
        if name in built:
            return f'href="{name}.html{m.group(3) or ""}"'
        return m.group(0)

    return re.sub(r'href="((?:\.\./)?(?:notebooks/)?)(\d\d_[A-Za-z0-9_]+)\.ipynb(#[^"]*)?"',
                  swap, markup)


def _unlink_outside(markup: str) -> str:
    """Relative links to files that are not pages of the site (source files, configs)
    become plain text; absolute links and in-page anchors stay."""
    def keep_or_drop(m):
        href = m.group(1)
        if re.match(r"^(https?:|mailto:|#)", href) or re.match(r"^[\w-]+\.html(#.*)?$", href):
            return m.group(0)
        return m.group(2)

    return re.sub(r'<a href="([^"]*)"[^>]*>(.*?)</a>', keep_or_drop, markup, flags=re.S)


def _label(page: Page) -> str:
    """The page's title, with its lesson number in front unless the title has it."""
    number = page.name[:2]
    title = page.title if page.title.startswith(number) else f"{number} {page.title}"
    return html.escape(title)


def _nav(pages: list[Page], i: int | None) -> str:
    """The bar at the top of every page: home, previous and next lesson."""
    parts = [f'<a class="dllm-home" href="index.html">{html.escape(COURSE_TITLE)}</a>']
    if i is not None:
        if i > 0:
            p = pages[i - 1]
            parts.append(f'<a class="dllm-prev-page" href="{p.name}.html" rel="prev">'
                         f"\u2190 {_label(p)}</a>")
        if i + 1 < len(pages):
            p = pages[i + 1]
            parts.append(f'<a class="dllm-next-page" href="{p.name}.html" rel="next">'
                         f"{_label(p)} \u2192</a>")
    return '<nav class="dllm-nav">' + "".join(parts) + "</nav>"


def _lesson_list(pages: list[Page]) -> str:
    items = "".join(
        f'<li><a href="{p.name}.html">{_label(p)}</a></li>' for p in pages
    )
    return f'<nav class="dllm-lessons"><h2>Lessons</h2><ul>{items}</ul></nav>'


def _index_html(readme: Path, pages: list[Page]) -> str:
    from nbconvert.filters.markdown_mistune import markdown2html_mistune

    body = markdown2html_mistune(readme.read_text(encoding="utf-8"))
    body = _unlink_outside(_link_notebooks(body, {p.name for p in pages}))
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1.0">\n'
        f"<title>{html.escape(COURSE_TITLE)}</title>\n"
        '<link rel="stylesheet" href="assets/site.css">\n'
        f"{MATHJAX_CONFIG}\n</head>\n<body class=\"dllm-index\">\n{_nav(pages, None)}\n"
        f'<main class="dllm-readme">\n{_lesson_list(pages)}\n{body}\n</main>\n'
        "</body>\n</html>\n"
    )


def build_site(out: str | Path, notebooks_dir: str | Path | None = None,
               readme: str | Path | None = None, quiet: bool = False) -> Site:
    """Build the course site into ``out`` (created; its old pages are replaced).

    ``notebooks_dir`` defaults to the repository's ``notebooks/`` and ``readme`` to its
    ``README.md``. The notebooks are read as stored: re-execute them first for fresh
    outputs. Returns a ``Site`` listing the pages.
    """
    import nbformat
    from nbconvert import HTMLExporter

    notebooks_dir = Path(notebooks_dir) if notebooks_dir else REPO / "notebooks"
    readme = Path(readme) if readme else REPO / "README.md"
    if not readme.is_file():
        raise SystemExit(f"no README at {readme}; pass --readme FILE")
    paths = course_notebooks(notebooks_dir)
    mathjax = mathjax_dir()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    assets = out / "assets"
    if assets.exists():
        shutil.rmtree(assets)
    shutil.copytree(mathjax, assets / "mathjax")
    shutil.copy2(ASSETS / "site.css", assets / "site.css")

    site = Site(out)
    notebooks = []
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        animations, dropped = kernel_free(nb)
        site.pages.append(Page(path.stem, notebook_title(nb, path.stem), out /
                               f"{path.stem}.html", animations, dropped))
        notebooks.append(nb)

    exporter = HTMLExporter(template_name="dllm",
                            extra_template_basedirs=[str(ASSETS / "templates")])
    built = {p.name for p in site.pages}
    for i, (page, nb) in enumerate(zip(site.pages, notebooks)):
        nb.metadata["title"] = f"{page.title} \u2014 {COURSE_TITLE}"
        resources = {"dllm_site": {
            "mathjax_head": MATHJAX_CONFIG,
            "nav": _nav(site.pages, i),
            "footer": _nav(site.pages, i).replace('class="dllm-nav"',
                                                  'class="dllm-nav dllm-nav-bottom"'),
        }}
        body, _ = exporter.from_notebook_node(nb, resources=resources)
        page.path.write_text(_link_notebooks(body, built), encoding="utf-8")
        if not quiet:
            print(f"{page.name}.html  {page.animations} animation(s)", flush=True)
    site.index.write_text(_index_html(readme, site.pages), encoding="utf-8")
    if not quiet:
        print(f"site: {len(site.pages)} lessons in {out}/ (open {site.index})")
    return site


def main_site(argv=None) -> Site:
    parser = argparse.ArgumentParser(
        prog="python -m dllm_lesson site",
        description="Build the course as a static, offline web site from the notebooks' "
                    "stored outputs (open OUT/index.html).")
    parser.add_argument("--out", default="build/site", help="output folder "
                        "(default build/site)")
    parser.add_argument("--notebooks", default=None,
                        help="folder of the NN_name.ipynb notebooks (default: notebooks/)")
    parser.add_argument("--readme", default=None,
                        help="the Markdown file that becomes index.html (default README.md)")
    parser.add_argument("--quiet", action="store_true", help="print nothing")
    args = parser.parse_args(argv)
    return build_site(args.out, args.notebooks, args.readme, quiet=args.quiet)


if __name__ == "__main__":  # pragma: no cover
    main_site(sys.argv[1:])
