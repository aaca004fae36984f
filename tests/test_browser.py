"""The de-masking widgets in a real JupyterLab, driven by headless Chromium.

Recipe (COURSE.md, "Quality bars"): JupyterLab 4 on 127.0.0.1 with a token, Playwright's
Python package launching the system ``chromium`` by explicit path (it never downloads a
browser), Run All Cells, check that the player opened on the answer, click its Play
button, and check that the kernel callback re-rendered the answer from step 0, all
``[MASK]`` (or Duo's random start), to the final text. Screenshots go to
``tests/artifacts/browser/``.

Run with ``python -m pytest -m browser tests/test_browser.py``. Tests skip only when
Chromium or Playwright is missing; a missing course notebook is a failure.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "tests" / "artifacts" / "browser"
COURSE_NOTEBOOKS = ("03_greedy_decoding.ipynb", "09_duo_sampling.ipynb")
KERNELSPEC = {"name": "python3", "display_name": "Python 3", "language": "python"}
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
# JupyterLab settings for a quiet, deterministic session: no news/update toasts, every
# cell attached to the DOM (no virtual scrolling), and no autosave (the course notebooks
# keep their stored outputs)
LAB_SETTINGS = {
    "@jupyterlab/apputils-extension/notification": {
        "fetchNews": "false", "checkForUpdates": False, "doNotDisturbMode": True,
    },
    "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
    "@jupyterlab/docmanager-extension/plugin": {"autosave": False},
}
DISABLED_EXTENSIONS = {"@jupyterlab/apputils-extension:announcements": True}


def chromium_path() -> str:
    return shutil.which("chromium") or "/usr/bin/chromium"


def missing_browser_tools() -> str | None:
    """Why the browser tests cannot run here, or None."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed"
    if not os.access(chromium_path(), os.X_OK):
        return "no chromium executable"
    return None


SKIP_REASON = "apt-get install chromium && pip install playwright, or run .ci/run"


# ---------------------------------------------------------------------------------------
# JupyterLab server
# ---------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class JupyterLab:
    """A JupyterLab 4 server in a subprocess, isolated config, killed on ``stop()``."""

    def __init__(self, root_dir: Path, state_dir: Path):
        self.root_dir = Path(root_dir)
        self.state = Path(state_dir)
        self.port = _free_port()
        self.token = secrets.token_hex(16)
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.log_path = self.state / "jupyterlab.log"

    def _write_config(self) -> dict:
        dirs = {k: self.state / k for k in ("config", "runtime", "settings", "workspaces")}
        for d in dirs.values():
            d.mkdir(parents=True, exist_ok=True)
        for plugin, values in LAB_SETTINGS.items():
            path = dirs["settings"] / f"{plugin}.jupyterlab-settings"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(values))
        labconfig = dirs["config"] / "labconfig"
        labconfig.mkdir(exist_ok=True)
        (labconfig / "page_config.json").write_text(
            json.dumps({"disabledExtensions": DISABLED_EXTENSIONS})
        )
        env = dict(os.environ)
        env.update(
            JUPYTER_CONFIG_DIR=str(dirs["config"]),
            JUPYTER_RUNTIME_DIR=str(dirs["runtime"]),
            JUPYTERLAB_SETTINGS_DIR=str(dirs["settings"]),
            JUPYTERLAB_WORKSPACES_DIR=str(dirs["workspaces"]),
            JUPYTER_PLATFORM_DIRS="1",
            PYTHONPATH=os.pathsep.join(
                p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p
            ),
            PYTHONUNBUFFERED="1",
        )
        return env

    def start(self, timeout_s: float = 90.0) -> "JupyterLab":
        env = self._write_config()
        cmd = [
            sys.executable, "-m", "jupyter", "lab", "--no-browser",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={self.port}",
            "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={self.token}",
            f"--ServerApp.root_dir={self.root_dir}",
            "--LabApp.news_url=None",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            "--LabApp.expose_app_in_browser=True",  # window.jupyterapp, for commands
            # an absolute path: no .ipynb_checkpoints/ next to the notebooks
            f"--FileCheckpoints.checkpoint_dir={self.state / 'checkpoints'}",
        ]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            cmd.append("--allow-root")
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self._log,
                                     stderr=subprocess.STDOUT, cwd=self.root_dir)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jupyter lab exited early:\n{self.log_tail()}")
            try:
                self.api("GET", "/api/status")
                return self
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.25)
        raise TimeoutError(f"jupyter lab silent for {timeout_s} s:\n{self.log_tail()}")

    def api(self, method: str, path: str):
        req = urllib.request.Request(
            self.url + path, method=method,
            headers={"Authorization": f"token {self.token}"},
        )
        with urllib.request.urlopen(req, timeout=5) as resp:
            body = resp.read()
        return json.loads(body) if body else None

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text().splitlines()[-n:])
        except OSError:
            return ""

    def lab_url(self, rel_path: str = "") -> str:
        tree = f"/tree/{rel_path}" if rel_path else ""
        return f"{self.url}/lab{tree}?token={self.token}"

    def stop(self) -> None:
        if self.proc is None:
            return
        try:
            if self.proc.poll() is None:
                for kernel in self.api("GET", "/api/kernels") or []:
                    self.api("DELETE", f"/api/kernels/{kernel['id']}")
        except Exception:  # the server may already be gone: terminate anyway
            pass
        finally:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=15)
            self._log.close()


@pytest.fixture(scope="session")
def lab_factory(tmp_path_factory):
    """Start JupyterLab servers on demand (one per root directory); stop them all."""
    servers: dict[Path, JupyterLab] = {}

    def get(root_dir: Path) -> JupyterLab:
        root_dir = Path(root_dir).resolve()
        if root_dir not in servers:
            state = tmp_path_factory.mktemp("jupyterlab")
            servers[root_dir] = JupyterLab(root_dir, state)
            servers[root_dir].start()
        return servers[root_dir]

    try:
        yield get
    finally:
        for server in servers.values():
            server.stop()


# ---------------------------------------------------------------------------------------
# the helper: open a notebook, run it, play the first DemaskPlayer
# ---------------------------------------------------------------------------------------

_JS_OPEN = """async (path) => {
  const app = window.jupyterapp;
  let panel = null;
  for (const w of app.shell.widgets('main')) {
    if (w.context && w.context.path === path) { panel = w; }
  }
  if (!panel) { panel = await app.commands.execute('docmanager:open', {path}); }
  await panel.context.ready;
  await panel.sessionContext.ready;
  app.shell.activateById(panel.id);
  if (app.shell.leftCollapsed === false) { app.shell.collapseLeft(); }
  return panel.id;
}"""

_JS_RUN_ALL = """async (id) => {
  const app = window.jupyterapp;
  const panel = [...app.shell.widgets('main')].find(w => w.id === id);
  app.shell.activateById(id);
  if (app.shell.currentWidget !== panel) { throw new Error('notebook is not current'); }
  await app.commands.execute('notebook:run-all-cells');
  const errors = [];
  for (const cell of panel.content.widgets) {
    const outputs = cell.model.sharedModel.toJSON().outputs || [];
    for (const out of outputs) {
      if (out.output_type === 'error') { errors.push(out.ename + ': ' + out.evalue); }
    }
  }
  return errors;
}"""

_JS_SHUTDOWN = """async (id) => {
  const panel = [...window.jupyterapp.shell.widgets('main')].find(w => w.id === id);
  if (panel) { await panel.sessionContext.shutdown(); }
}"""

_JS_READ = """(root) => {
  const answer = root.querySelector('.dllm-answer');
  if (!answer) { return null; }
  return {
    text: answer.textContent,
    final: answer.dataset.final,
    step: Number(answer.dataset.step),
    n: Number(answer.dataset.n),
    status: [...answer.querySelectorAll('.dllm-tok')].map(
      s => [...s.classList].filter(c => c.startsWith('dllm-') && c !== 'dllm-tok'
                                         && c !== 'dllm-special')[0].slice(5)),
  };
}"""

# Record every frame the kernel sends back (the HTML widget's content is replaced each
# time): its step, text and chip statuses
_JS_WATCH = """(root) => {
  window.__dllmSeen = [];
  const frame = root.querySelector('.dllm-frame');
  const read = %s;
  const note = () => {
    const seen = read(frame);
    const last = window.__dllmSeen[window.__dllmSeen.length - 1];
    if (seen && !(last && last.step === seen.step && last.text === seen.text)) {
      window.__dllmSeen.push(seen);
    }
  };
  new MutationObserver(note).observe(frame, {childList: true, subtree: true});
}""" % _JS_READ

# Play has run to the end: frame 0 was painted, then the last one
_JS_ENDED = """(root) => {
  const seen = window.__dllmSeen;
  const a = root.querySelector('.dllm-answer');
  return seen.some(f => f.step === 0) && seen.length > 1
    && seen[seen.length - 1].step === seen[seen.length - 1].n
    && a.dataset.step === a.dataset.n;
}"""


@dataclass
class AnimationResult:
    before_text: str
    after_text: str
    screenshots: list[Path]
    final_text: str = ""
    before_status: list[str] = field(default_factory=list)
    after_status: list[str] = field(default_factory=list)
    n_steps: int = 0
    before_step: int = -1
    after_step: int = 0
    first_played: dict = field(default_factory=dict)
    reached_end: bool = False
    steps_seen: list[int] = field(default_factory=list)
    cell_errors: list[str] = field(default_factory=list)
    seconds: float = 0.0
    phases: dict = field(default_factory=dict)


def open_lab_page(browser, lab: JupyterLab, rel_path: str = ""):
    """A Chromium page with JupyterLab loaded (on ``rel_path`` if given)."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(lab.lab_url(rel_path))
    page.wait_for_function("() => window.jupyterapp !== undefined", timeout=120_000)
    page.evaluate("async () => { await window.jupyterapp.started;"
                  " await window.jupyterapp.restored; }")
    return page


def run_notebook_animation(
    page, lab: JupyterLab, nb_path: Path, name: str | None = None,
    player_index: int = 0, run_timeout_s: float = 300.0, end_timeout_s: float | None = None,
    shot_dir: Path = ARTIFACTS,
) -> AnimationResult:
    """Open ``nb_path`` in ``lab``, Run All Cells, play a ``DemaskPlayer``, read the answer.

    ``page`` is a JupyterLab page from ``open_lab_page``. Returns the answer text before
    and after Play (``textContent`` of ``.dllm-answer``), the final text the player says
    it will reach (``data-final``), chip statuses, the steps the browser displayed, cell
    errors, phase timings and screenshots. It does not assert: ``check_demasked`` does,
    so a broken widget is reported, not hidden. The notebook's kernel is shut down.
    """
    t0 = time.monotonic()
    phases: dict[str, float] = {}

    def lap(phase: str) -> None:
        phases[phase] = round(time.monotonic() - t0 - sum(phases.values()), 2)

    nb_path = Path(nb_path).resolve()
    rel = nb_path.relative_to(lab.root_dir).as_posix()
    name = name or nb_path.stem
    shot_dir.mkdir(parents=True, exist_ok=True)
    shots: list[Path] = []
    panel_id = page.evaluate(_JS_OPEN, rel)
    lap("open")
    try:
        errors = page.evaluate(_JS_RUN_ALL, panel_id)
        lap("run_all")
        player = page.locator(f'[id="{panel_id}"] .dllm-player').nth(player_index)
        try:
            player.locator(".dllm-answer").wait_for(timeout=run_timeout_s * 1000)
        except Exception:
            path = shot_dir / f"{name}_0_no_player.png"
            page.screenshot(path=path, full_page=True)
            raise AssertionError(
                f"{rel}: no DemaskPlayer answer appeared; cell errors: {errors}; "
                f"screenshot {path}"
            ) from None
        player.scroll_into_view_if_needed()
        root = player.element_handle()
        before = page.evaluate(_JS_READ, root)
        shots.append(shot_dir / f"{name}_1_before.png")
        page.screenshot(path=shots[-1])
        page.evaluate(_JS_WATCH, root)
        lap("player")

        player.locator(".widget-play button").first.click()
        speed = float(player.locator(".widget-readout").nth(1).text_content() or 5)
        wait_s = end_timeout_s or 20.0 + 2.0 * before["n"] / max(speed, 0.5)
        reached = True
        try:
            page.wait_for_function(_JS_ENDED, arg=root, timeout=wait_s * 1000)
        except Exception:  # playwright's TimeoutError: report, do not raise
            reached = False
        page.wait_for_timeout(300)  # let the last frame paint
        after = page.evaluate(_JS_READ, root)
        seen = page.evaluate("() => window.__dllmSeen")
        first = next((f for f in seen if f["step"] == 0), {})
        shots.append(shot_dir / f"{name}_2_after.png")
        page.screenshot(path=shots[-1])
        lap("play")
    finally:
        page.evaluate(_JS_SHUTDOWN, panel_id)
    return AnimationResult(
        before_text=before["text"], after_text=after["text"], screenshots=shots,
        final_text=before["final"], before_status=before["status"],
        after_status=after["status"], n_steps=before["n"], before_step=before["step"],
        after_step=after["step"], first_played=first,
        reached_end=reached, steps_seen=[f["step"] for f in seen], cell_errors=errors,
        seconds=time.monotonic() - t0, phases=phases,
    )


def check_demasked(result: AnimationResult, start: str = "mask") -> None:
    """The animation ran in the browser: the player opened on the answer (a stored
    notebook shows the result, not all masks); Play went back to step 0, all ``start``
    chips, and de-masked to the final answer."""
    assert not result.cell_errors, f"cells raised: {result.cell_errors}"
    assert result.n_steps >= 1
    assert result.before_step == result.n_steps, "the player did not open on the answer"
    assert result.before_text == result.final_text
    first = result.first_played
    assert first, f"Play never showed step 0 (frames seen: {result.steps_seen})"
    assert set(first["status"]) == {start}, first["status"]
    assert first["text"] != result.final_text, "step 0 already shows the answer"
    if start == "mask":
        assert first["text"] == "[MASK]" * len(first["status"])
    assert result.reached_end, (
        f"the answer stopped at step {result.after_step} / {result.n_steps} "
        f"(frames seen: {result.steps_seen})"
    )
    assert result.after_text == result.final_text
    assert not {"mask", "remasked"} & set(result.after_status), result.after_status
    # several intermediate frames were painted, not only the first and the last
    assert len(set(result.steps_seen)) >= min(3, result.n_steps + 1), result.steps_seen


# ---------------------------------------------------------------------------------------
# a synthetic notebook (fake tokenizer, hand-made Step records)
# ---------------------------------------------------------------------------------------

_SYNTHETIC = """\
from dataclasses import dataclass, field

from dllm_lesson import viz

viz.setup()


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
    pieces = {{3: "[SEP]", 10: "The", 11: " capital", 12: " of", 13: " France",
               14: " is", 15: " Paris", 16: ".", 20: " zebra", 21: " blue", 22: " 42"}}

    def decode(self, ids):
        return "".join(self.pieces[i] for i in ids)


final = [10, 11, 12, 13, 14, 15, 16, 3]
duo = {duo}
start = [20, 21, 22, 20, 21, 22, 20, 21] if duo else [4] * 8
tokens, steps = list(start), []
for i, pos in enumerate([5, 0, 3, 1, 4, 2, 6, 7]):
    tokens = list(tokens)
    tokens[pos] = final[pos]
    steps.append(Step(i + 1, tokens, [pos], confidence=[0.5] * 8, nfe=i + 1))
player = viz.DemaskPlayer(steps, Tok(), title="synthetic", speed=10,
                          initial_tokens=start if duo else None)
{breakage}
player
"""

_BREAKAGE = {
    "ok": "",
    "unlinked": "player.link.unlink()  # Play no longer moves the slider",
    "no_observer": "player.slider.unobserve(player._on_step, names='value')",
}


def write_synthetic_notebook(path: Path, variant: str = "ok", duo: bool = False) -> Path:
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    nb.metadata["language_info"] = {"name": "python"}
    code = _SYNTHETIC.format(duo=duo, breakage=_BREAKAGE[variant])
    nb.cells = [nbformat.v4.new_markdown_cell("# synthetic player"),
                nbformat.v4.new_code_cell(textwrap.dedent(code))]
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


@pytest.fixture(scope="session")
def lab_page(browser, lab_factory):
    """One JupyterLab page per server, reused by every notebook (saves the app load)."""
    pages = {}

    def get(root_dir: Path, first_notebook: Path):
        lab = lab_factory(root_dir)
        if lab.root_dir not in pages:
            rel = Path(first_notebook).resolve().relative_to(lab.root_dir).as_posix()
            pages[lab.root_dir] = open_lab_page(browser, lab, rel)
        return pages[lab.root_dir], lab

    try:
        yield get
    finally:
        for page in pages.values():
            page.close()


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory):
    return tmp_path_factory.mktemp("synthetic_notebooks")


@pytest.mark.parametrize("duo", [False, True], ids=["masked", "duo"])
def test_synthetic_player_animates(lab_page, synthetic_root, duo):
    kind = "duo" if duo else "masked"
    nb = write_synthetic_notebook(synthetic_root / f"player_{kind}.ipynb", duo=duo)
    page, lab = lab_page(synthetic_root, nb)
    result = run_notebook_animation(page, lab, nb, name=f"synthetic_{nb.stem}")
    print(f"{nb.name}: {result.seconds:.1f} s {result.phases}, frames {result.steps_seen}")
    check_demasked(result, start="noise" if duo else "mask")
    assert result.after_text == "The capital of France is Paris.[SEP]"


@pytest.mark.parametrize("variant", ["unlinked", "no_observer"])
def test_broken_player_is_caught(lab_page, synthetic_root, variant):
    nb = write_synthetic_notebook(synthetic_root / f"broken_{variant}.ipynb", variant)
    page, lab = lab_page(synthetic_root, nb)
    result = run_notebook_animation(page, lab, nb, name=f"synthetic_{nb.stem}",
                                    end_timeout_s=3.0)
    print(f"{nb.name}: {result.seconds:.1f} s {result.phases}, frames {result.steps_seen}")
    assert not result.cell_errors
    assert not result.reached_end
    assert result.after_text == result.before_text == result.final_text
    assert not result.first_played
    with pytest.raises(AssertionError):
        check_demasked(result)


# ---------------------------------------------------------------------------------------
# the course notebooks
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("notebook", COURSE_NOTEBOOKS)
def test_course_notebook_player(lab_page, notebook):
    nb = REPO / "notebooks" / notebook
    assert nb.exists(), f"notebooks/{notebook} is missing (its player is tested here)"
    original, listing = nb.read_bytes(), sorted(nb.parent.iterdir())
    page, lab = lab_page(REPO, nb)
    try:
        result = run_notebook_animation(page, lab, nb, name=nb.stem)
    finally:
        if nb.read_bytes() != original:  # never leave the stored outputs changed
            nb.write_bytes(original)
            pytest.fail(f"the browser run modified notebooks/{notebook}; restored it")
    assert sorted(nb.parent.iterdir()) == listing, "the run left files in notebooks/"
    print(f"{notebook}: {result.seconds:.1f} s {result.phases}, {result.n_steps} steps, "
          f"final {result.final_text!r}")
    check_demasked(result, start="noise" if "duo" in notebook else "mask")


# ---------------------------------------------------------------------------------------
# a stored notebook opened without running it: no kernel output, no widget model
# ---------------------------------------------------------------------------------------


def write_stored_player_notebook(path: Path) -> Path:
    """A notebook whose player output was stored by a kernel (its display bundle) and
    whose widget state was not saved: what a reader who opens it before running sees."""
    import nbformat

    ns: dict = {}
    exec(_SYNTHETIC.format(duo=False, breakage=""), ns)
    bundle = ns["player"]._repr_mimebundle_()
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    nb.cells = [nbformat.v4.new_markdown_cell("# stored player"),
                nbformat.v4.new_code_cell("player", outputs=[nbformat.v4.new_output(
                    "execute_result", data=bundle, execution_count=1)])]
    nbformat.write(nb, path)
    return path


def test_stored_player_shows_its_answer_before_the_cell_runs(lab_page, synthetic_root):
    nb = write_stored_player_notebook(synthetic_root / "stored_player.ipynb")
    page, lab = lab_page(synthetic_root, nb)
    rel = nb.relative_to(lab.root_dir).as_posix()
    panel_id = page.evaluate(_JS_OPEN, rel)
    try:
        output = page.locator(f'[id="{panel_id}"] .jp-OutputArea-output').first
        answer = output.locator(".dllm-answer")
        answer.wait_for(timeout=30_000)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        output.screenshot(path=ARTIFACTS / "stored_player_no_kernel.png")
        # JupyterLab shows an untrusted output's HTML sanitized (no script, no <style>,
        # no data-* attributes): not "DemaskPlayer(...)" and not all masks, but the stored
        # answer frame, with the filmstrip of key frames below it
        assert answer.text_content() == "The capital of France is Paris.[SEP]"
        assert "DemaskPlayer(" not in output.text_content()
        assert not output.locator(".dllm-controls").is_visible()  # they need the script
        img = output.locator("img.dllm-filmstrip")
        assert img.evaluate("i => i.complete && i.naturalWidth > 0 && i.offsetHeight > 0")
    finally:
        page.evaluate(_JS_SHUTDOWN, panel_id)
