"""The course site (``python -m dllm_lesson site``): built from the notebooks' stored
outputs, read offline in headless Chromium.

The fast tests build a site from two small synthetic notebooks. The ``browser`` tests
serve a built site on 127.0.0.1 and open every page in Chromium (launched as in
tests/test_browser.py): no console errors, math typeset by the bundled MathJax, every
image decoded, the de-masking animations play without a kernel, and no request leaves
loopback. Screenshots go to ``tests/artifacts/site/``.

Run with ``python -m pytest -o addopts="" -p no:cacheprovider tests/test_site.py``.
"""

from __future__ import annotations

import functools
import http.server
import json
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import pytest

from dllm_lesson import site as course_site

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "tests" / "artifacts" / "site"
# the lessons whose de-masking a reader must be able to watch without Python
ANIMATED_LESSONS = {"03_greedy_decoding": "greedy", "09_duo_sampling": "duo"}


# ---------------------------------------------------------------------------------------
# synthetic notebooks: a player (fake tokenizer, hand-made steps), math, a plot
# ---------------------------------------------------------------------------------------


@dataclass
class Step:
    step: int
    tokens: list
    changed: list
    remasked: list = field(default_factory=list)
    corrected: list = field(default_factory=list)
    confidence: list = field(default_factory=list)
    nfe: int = 0
    block: int = 0


class Tok:
    mask_token_id = 4
    pieces = {3: "[SEP]", 10: "The", 11: " capital", 12: " of", 13: " France", 14: " is",
              15: " Paris", 16: ".", 20: " zebra\x19", 21: " blue"}

    def decode(self, ids):
        return "".join(self.pieces[i] for i in ids)


FINAL = [10, 11, 12, 13, 14, 15, 16, 3]


def duo_player():
    """Duo-like steps from a random start, with one correction at step 4."""
    from dllm_lesson import viz

    start = [20, 21, 20, 21, 20, 21, 20, 21]
    tokens, steps = list(start), []
    for i, pos in enumerate([5, 0, 3, 1, 4, 2, 6, 7]):
        tokens = list(tokens)
        tokens[pos] = FINAL[pos]
        corrected = []
        if i == 3:
            tokens[5], corrected = 13, [5]          # a wrong word, corrected at step 5
        if i == 4:
            tokens[5], corrected = 15, [5]
        steps.append(Step(i + 1, tokens, [pos], corrected=corrected, nfe=i + 1))
    return viz.DemaskPlayer(steps, Tok(), title="synthetic duo", initial_tokens=start,
                            speed=20)


def write_notebooks(folder: Path) -> Path:
    """Two executed-looking notebooks: 00 with math and a PNG plot, 01 with a player
    output (its display bundle as a kernel would store it) and a tqdm-like widget."""
    import base64
    import io

    import nbformat
    from matplotlib.figure import Figure

    folder.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(2, 1.5), dpi=50)
    fig.subplots().plot([0, 1, 2], [1, 0, 1])
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    png = base64.b64encode(buf.getvalue()).decode()
    nb0 = nbformat.v4.new_notebook()
    nb0.cells = [
        nbformat.v4.new_markdown_cell(
            "# 00 · Math and a plot\n\nThe weight is $w(t) = 1/t$ and\n\n"
            "$$\\mathcal{L} = \\mathbb{E}_t\\,\\frac{1}{t}\\sum_i \\log p_\\theta(x_i)$$\n\n"
            "Next: [the player](01_player.ipynb)."),
        nbformat.v4.new_code_cell("plot()", outputs=[nbformat.v4.new_output(
            "display_data", data={"image/png": png, "text/plain": "<Figure>"})]),
    ]
    player = duo_player()
    bundle = player._repr_mimebundle_()
    nb1 = nbformat.v4.new_notebook()
    nb1.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {
        "state": {}, "version_major": 2, "version_minor": 0}}
    nb1.cells = [
        nbformat.v4.new_markdown_cell("# 01 · A player\n\nWatch the correction."),
        nbformat.v4.new_code_cell("player", outputs=[nbformat.v4.new_output(
            "execute_result", data=bundle, execution_count=1)]),
        nbformat.v4.new_code_cell("bar", outputs=[nbformat.v4.new_output(
            "display_data", data={
                "application/vnd.jupyter.widget-view+json": {
                    "model_id": "abc", "version_major": 2, "version_minor": 0},
                "text/plain": "100% 3/3"})]),
    ]
    nbformat.write(nb0, folder / "00_math.ipynb")
    nbformat.write(nb1, folder / "01_player.ipynb")
    (folder / "README.md").write_text(
        "# A course\n\n| n | lesson |\n|---|---|\n| 00 | [math](notebooks/00_math.ipynb) |\n"
        "| 01 | [player](notebooks/01_player.ipynb) |\n\nSee [the code](dllm_lesson/viz.py)"
        " and [the web](https://example.org/).\n")
    return folder


@pytest.fixture(scope="module")
def synthetic_site(tmp_path_factory):
    root = tmp_path_factory.mktemp("site_src")
    nbs = write_notebooks(root / "notebooks")
    out = tmp_path_factory.mktemp("site_out")
    built = course_site.build_site(out, nbs, nbs / "README.md", quiet=True)
    return built


def test_build_writes_a_page_per_notebook_and_an_index(synthetic_site):
    site = synthetic_site
    assert [p.name for p in site.pages] == ["00_math", "01_player"]
    assert [p.title for p in site.pages] == ["00 · Math and a plot", "01 · A player"]
    assert [p.animations for p in site.pages] == [0, 1]
    assert [p.widgets_dropped for p in site.pages] == [0, 2]
    assert site.index.is_file() and all(p.path.is_file() for p in site.pages)
    assert (site.out / "assets" / "mathjax" / "MathJax.js").is_file()
    assert list((site.out / "assets" / "mathjax" / "fonts").rglob("*.woff"))
    index = site.index.read_text()
    # the syllabus links go to the built pages; links to source files become text
    assert 'href="00_math.html"' in index and 'href="01_player.html"' in index
    assert "notebooks/" not in index and 'href="dllm_lesson/viz.py"' not in index
    assert "the code" in index and 'href="https://example.org/"' in index
    page0 = site.pages[0].path.read_text()
    assert 'href="01_player.html"' in page0 and ".ipynb" not in page0
    assert 'rel="next"' in page0 and 'rel="prev"' not in page0


def test_pages_load_nothing_from_the_network(synthetic_site):
    for path in [synthetic_site.index] + [p.path for p in synthetic_site.pages]:
        markup = path.read_text()
        loaded = re.findall(r'<(?:script|link|img)\b[^>]*\b(?:src|href)="([^"]*)"', markup)
        assert all(not re.match(r"^(https?:)?//", u) for u in loaded), (path.name, loaded)
        assert "cdnjs" not in markup and "unpkg" not in markup
        assert "@import" not in markup
        assert not re.findall(r"url\(\s*['\"]?(?:https?:)?//", markup), path.name


def test_player_page_holds_the_animation_not_the_widget(synthetic_site):
    markup = synthetic_site.pages[1].path.read_text()
    assert markup.count('class="dllm-anim"') == 1
    assert "application/vnd.jupyter.widget-view+json" not in markup
    assert "application/vnd.jupyter.widget-state+json" not in markup
    assert "100% 3/3" in markup          # a widget without HTML keeps its text


def test_bad_folders_say_what_to_do(tmp_path):
    with pytest.raises(SystemExit, match="--notebooks"):
        course_site.build_site(tmp_path / "out", tmp_path / "nowhere", quiet=True)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="no NN_name.ipynb"):
        course_site.build_site(tmp_path / "out", tmp_path / "empty", quiet=True)
    with pytest.raises(SystemExit, match="--readme"):
        course_site.build_site(tmp_path / "out", tmp_path / "empty",
                               tmp_path / "missing.md", quiet=True)


def test_cli_entry(tmp_path, capsys):
    from dllm_lesson.__main__ import main

    nbs = write_notebooks(tmp_path / "src" / "notebooks")
    assert main(["site", "--out", str(tmp_path / "o"), "--notebooks", str(nbs),
                 "--readme", str(nbs / "README.md")]) == 0
    out = capsys.readouterr().out
    assert "01_player.html  1 animation(s)" in out and (tmp_path / "o" / "index.html").exists()


# ---------------------------------------------------------------------------------------
# in Chromium, served on 127.0.0.1
# ---------------------------------------------------------------------------------------


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def serve():
    """Serve folders on 127.0.0.1 (one thread each); stop them at the end."""
    servers = []

    def start(folder: Path) -> str:
        handler = functools.partial(_Quiet, directory=str(folder))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def chromium(browser):
    """The session's one headless Chromium (``browser`` in conftest.py): a second sync
    Playwright cannot start while the first one's event loop is running."""
    return browser


@dataclass
class PageReport:
    name: str
    errors: list = field(default_factory=list)
    outside: list = field(default_factory=list)
    failed: list = field(default_factory=list)
    math: int = 0
    math_errors: int = 0
    images: list = field(default_factory=list)       # [src head, naturalWidth]
    animations: int = 0


_JS_PAGE = """() => ({
  math: document.querySelectorAll('.MathJax, .MathJax_Display, .MathJax_SVG').length,
  math_errors: document.querySelectorAll('.MathJax_Error, merror, .mjx-merror').length,
  images: [...document.images].map(i => [i.src.slice(0, 40), i.naturalWidth, i.complete]),
  animations: document.querySelectorAll('.dllm-anim').length,
})"""

# the site's MathJax config marks the body when the first typeset has ended
_JS_MATH_DONE = "() => document.body && document.body.dataset.mathjax === 'done'"


def open_page(browser, url: str, name: str) -> tuple:
    """A page that records console errors and every request, and refuses any request
    that would leave loopback."""
    report = PageReport(name)
    page = browser.new_page(viewport={"width": 1200, "height": 900})

    def route(r):
        host = urlparse(r.request.url).hostname
        if r.request.url.startswith("data:") or host == "127.0.0.1":
            r.continue_()
        else:
            report.outside.append(r.request.url)
            r.abort()

    page.route("**/*", route)
    page.on("console", lambda m: m.type == "error" and report.errors.append(m.text))
    page.on("pageerror", lambda e: report.errors.append(f"pageerror: {e}"))
    page.on("requestfailed", lambda r: report.failed.append(r.url))
    page.on("response", lambda r: r.status >= 400 and report.failed.append(
        f"{r.status} {r.url}"))
    page.goto(url, wait_until="load")
    page.wait_for_function(_JS_MATH_DONE, timeout=60_000)
    report.__dict__.update(page.evaluate(_JS_PAGE))
    return page, report


def check_page(report: PageReport, needs_math: bool) -> None:
    assert not report.errors, f"{report.name}: console errors {report.errors}"
    assert not report.outside, f"{report.name}: requests left loopback {report.outside}"
    assert not report.failed, f"{report.name}: failed requests {report.failed}"
    if needs_math:
        assert report.math > 0, f"{report.name}: no typeset math"
    assert report.math_errors == 0, f"{report.name}: {report.math_errors} math errors"
    broken = [i for i in report.images if not (i[2] and i[1] > 0)]
    assert not broken, f"{report.name}: images that did not load {broken}"


_JS_READ_ANIM = """(root) => {
  const a = root.querySelector('.dllm-answer');
  return {step: Number(a.dataset.step), n: Number(a.dataset.n), final: a.dataset.final,
          text: a.textContent,
          status: [...a.querySelectorAll('.dllm-tok')].map(s => [...s.classList]
            .filter(c => c.startsWith('dllm-') && c !== 'dllm-tok' && c !== 'dllm-special')[0]
            .slice(5))};
}"""

_JS_WATCH_ANIM = """(root) => {
  root.__seen = [];
  const a = root.querySelector('.dllm-answer');
  const read = %s;
  new MutationObserver(() => root.__seen.push(read(root)))
    .observe(a, {childList: true, subtree: true, attributes: true});
}""" % _JS_READ_ANIM


def play_animation(page, index: int, name: str, timeout_s: float = 30.0) -> dict:
    """Click Play on the ``index``-th animation; return the frames it painted."""
    root = page.locator(".dllm-anim").nth(index)
    root.scroll_into_view_if_needed()
    handle = root.element_handle()
    before = page.evaluate(_JS_READ_ANIM, handle)
    controls_visible = root.locator(".dllm-controls").is_visible()
    still_hidden = root.locator(".dllm-filmstrip").count() == 0 or \
        not root.locator(".dllm-filmstrip").is_visible()
    page.evaluate(_JS_WATCH_ANIM, handle)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    root.screenshot(path=ARTIFACTS / f"{name}_{index}_before.png")
    root.locator(".dllm-play").click()
    page.wait_for_function(
        "(root) => root.__seen.length > 1 && root.__seen.some(f => f.step === 0)"
        " && root.__seen[root.__seen.length - 1].step === root.__seen[0].n",
        arg=handle, timeout=timeout_s * 1000)
    root.screenshot(path=ARTIFACTS / f"{name}_{index}_after.png")
    seen = page.evaluate("(root) => root.__seen", handle)
    after = page.evaluate(_JS_READ_ANIM, handle)
    return {"before": before, "after": after, "seen": seen,
            "controls_visible": controls_visible, "still_hidden": still_hidden}


def check_played(result: dict, start: str) -> None:
    before, after, seen = result["before"], result["after"], result["seen"]
    assert result["controls_visible"] and result["still_hidden"]
    assert before["step"] == before["n"] and before["text"] == before["final"], \
        "the animation does not open on the answer"
    first = next(f for f in seen if f["step"] == 0)
    assert set(first["status"]) == {start}, first["status"]
    assert first["text"] != before["final"]
    texts = {f["text"] for f in seen}
    assert len({f["step"] for f in seen}) >= min(4, before["n"] + 1)
    assert len(texts) >= 3, "the frames did not change while playing"
    assert after["step"] == after["n"] and after["text"] == after["final"]
    assert not {"mask", "remasked", "noise"} & set(after["status"])


@pytest.mark.browser
def test_synthetic_site_in_chromium(chromium, serve, synthetic_site):
    base = serve(synthetic_site.out)
    page, report = open_page(chromium, f"{base}/01_player.html", "synthetic_01")
    try:
        check_page(report, needs_math=False)
        assert report.animations == 1
        result = play_animation(page, 0, "synthetic_01")
        check_played(result, start="noise")
        # the correction is painted in its own colour on the way
        assert any("corrected" in f["status"] for f in result["seen"])
        # step buttons and the slider move the frame without a kernel
        anim = page.locator(".dllm-anim").first
        anim.locator(".dllm-prev").click()
        assert anim.locator(".dllm-answer").get_attribute("data-step") == "7"
        anim.locator(".dllm-slider").fill("2")
        assert anim.locator(".dllm-answer").get_attribute("data-step") == "2"
        assert anim.locator(".dllm-caption").text_content().startswith("step 2 / 8")
    finally:
        page.close()
    page, report = open_page(chromium, f"{base}/00_math.html", "synthetic_00")
    try:
        check_page(report, needs_math=True)
        assert report.math >= 2 and len(report.images) == 1
    finally:
        page.close()


@pytest.fixture(scope="module")
def course_site_built(tmp_path_factory):
    out = tmp_path_factory.mktemp("course_site")
    return course_site.build_site(out, quiet=True)


@pytest.mark.browser
def test_course_site_offline_in_chromium(chromium, serve, course_site_built):
    """Every page of the built course: loads cleanly offline, math typeset, images
    decoded; notebook 03's and 09's de-masking plays (09: with self-correction)."""
    site = course_site_built
    base = serve(site.out)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    reports = {}
    page, report = open_page(chromium, f"{base}/index.html", "index")
    try:
        check_page(report, needs_math=False)
        links = page.evaluate("() => [...document.querySelectorAll('a')].map(a => a.href)")
        for page_ in site.pages:
            assert f"{base}/{page_.name}.html" in links, f"index lacks {page_.name}"
        page.screenshot(path=ARTIFACTS / "index.png")
    finally:
        page.close()
    for p in site.pages:
        markup = p.path.read_text(encoding="utf-8")
        needs_math = bool(re.search(r"\$[^$\n]+\$", markup))
        page, report = open_page(chromium, f"{base}/{p.name}.html", p.name)
        try:
            reports[p.name] = report
            check_page(report, needs_math)
            assert report.animations == p.animations
            page.screenshot(path=ARTIFACTS / f"{p.name}.png")
            if p.name in ANIMATED_LESSONS:
                kind = ANIMATED_LESSONS[p.name]
                assert report.animations >= 1, (
                    f"{p.name} stores no kernel-free animation: re-execute it with this "
                    "dllm_lesson (jupyter nbconvert --execute --inplace)")
                result = play_animation(page, 0, p.name, timeout_s=60)
                check_played(result, start="noise" if kind == "duo" else "mask")
                if kind == "duo":
                    assert any("corrected" in f["status"] for f in result["seen"]), \
                        "09's animation shows no self-correction"
        finally:
            page.close()
    summary = {k: {"math": r.math, "images": len(r.images), "animations": r.animations}
               for k, r in reports.items()}
    (ARTIFACTS / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary))
