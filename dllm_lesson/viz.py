"""Widgets and plots: watch a sequence being de-masked, and plot what the lessons measure.

Everything here imports and runs without a front end (plain Python, pytest, Agg). In a
notebook the de-masking player is an ipywidgets ``VBox``: a ``Play`` button, linked in the
browser to a step slider, whose value change runs a *kernel* callback that re-renders the
answer as HTML chips. Its output also stores every frame as a self-contained HTML + JS
animation and a PNG filmstrip, shown where no kernel runs (viewers, the course site).

Plot functions return a ``matplotlib.figure.Figure`` that pyplot does not manage: leave it
as the cell's last expression (or call ``display(fig)``) and it is shown exactly once.
``setup()`` at the top of a notebook switches on the inline backend that draws them.

Taught in ``03_greedy_decoding`` (player, heatmaps) and used by most notebooks.
"""

from __future__ import annotations

import html
import math
import os
import random
import time
import warnings
from typing import Iterable, Sequence

import ipywidgets as widgets
import numpy as np
from matplotlib.figure import Figure

from dllm_lesson.tokenizer import visible_text

__all__ = [
    "setup",
    "render_tokens_html",
    "frame_tokens",
    "frame_html",
    "frame_text",
    "DemaskPlayer",
    "show",
    "animate_decoding",
    "confidence_heatmap",
    "decode_order_plot",
    "plot_accuracy_vs_mask_ratio",
    "plot_flip_probability",
    "plot_tau_schedule",
    "plot_row_scale",
    "LiveLossPlot",
    "strategy_table",
    "STATUSES",
]

# Chip statuses, in the order the legend shows them
STATUSES = ("mask", "new", "done", "remasked", "corrected", "noise")
MASK_TEXT = "[MASK]"
NEWLINE_MARK = "\u21b5"  # shown for "\n" inside a chip, followed by a line break
FIGSIZE = (6.4, 3.6)
DPI = 100

# Messages of warnings that say nothing to a reader of the course
_NOISY_WARNINGS = (
    r".*IProgress not found.*",
    r".*TypedStorage is deprecated.*",
    r".*To copy construct from a tensor.*",
    r".*does not have many workers.*",
    r".*torch\.utils\._pytree.*",
    r".*`resume_download` is deprecated.*",
    r".*clean_up_tokenization_spaces.*",
    r".*Tight layout not applied.*",
    r".*FigureCanvasAgg is non-interactive.*",
)


def _in_notebook() -> bool:
    """True inside a Jupyter kernel (where widgets and ``display`` work)."""
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython ships with ipywidgets
        return False
    shell = get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


# ---------------------------------------------------------------------------------------
# setup
# ---------------------------------------------------------------------------------------


def setup(seed: int = 0) -> None:
    """The one setup call at the top of every notebook: seeds, threads, plot style.

    Seeds ``random``, ``numpy`` and ``torch`` with ``seed``; uses at most 2 CPU threads
    (the course's machines have 2 cores); fixes figure size, dpi and the SVG hash salt so
    stored outputs do not change between runs; sets short numpy/torch print options; and
    silences warnings that carry no lesson. Prints nothing.

    Taught in ``00_welcome``.
    """
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"setup(seed=...) takes an int, got {seed!r}")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # no fork warning
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    random.seed(seed)
    np.random.seed(seed)
    np.set_printoptions(precision=4, suppress=True, linewidth=92)
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a course dependency
        torch = None
    if torch is not None:
        torch.manual_seed(seed)
        torch.set_num_threads(min(2, os.cpu_count() or 1))
        torch.set_printoptions(precision=4, sci_mode=False, linewidth=92)

    import matplotlib

    if _in_notebook():
        from IPython import get_ipython

        get_ipython().run_line_magic("matplotlib", "inline")
    matplotlib.rcParams.update(
        {
            "figure.figsize": FIGSIZE,
            "figure.dpi": DPI,
            "savefig.dpi": DPI,
            "figure.max_open_warning": 0,
            "svg.hashsalt": "dllm_lesson",  # stable ids in SVG output
            "axes.grid": True,
            "grid.alpha": 0.3,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "font.size": 10,
            "image.cmap": "viridis",
        }
    )
    for message in _NOISY_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers\..*")
    warnings.filterwarnings("ignore", category=DeprecationWarning,
                            module=r"jupyter_client.*")


# ---------------------------------------------------------------------------------------
# de-masking frames
# ---------------------------------------------------------------------------------------

# The chips' colours, one place for the live widget, the kernel-free animation and the
# filmstrip: (background, text colour, border colour or "")
STATUS_COLOURS = {
    "mask": ("#e0e0e0", "#777777", ""),
    "new": ("#c8f7c5", "#000000", ""),
    "done": ("#f4f8ff", "#000000", ""),
    "remasked": ("#e0e0e0", "#bb0000", "#dd2222"),
    "corrected": ("#ffd9a8", "#000000", "#f08000"),
    "noise": ("#eee6f5", "#8a6fa8", ""),
}
_STATUS_EXTRA = {"new": "font-weight: bold;", "noise": "font-style: italic;"}
STATUS_LABELS = {"mask": "masked", "new": "new this step", "done": "decided",
                 "remasked": "re-masked", "corrected": "corrected", "noise": "random start"}


def _status_style(status: str) -> str:
    """The inline CSS of a chip of ``status`` (also the body of its CSS class)."""
    bg, fg, border = STATUS_COLOURS[status]
    style = f"background: {bg}; color: {fg};"
    if border:
        style += f" border-color: {border};"
    extra = _STATUS_EXTRA.get(status, "")
    return f"{style} {extra}" if extra else style


_CSS = ("<style>\n"
        ".dllm-answer {font-family: monospace; font-size: 13px; line-height: 2.0;\n"
        "  padding: 6px; border: 1px solid #ddd; border-radius: 4px; max-width: 100%;}\n"
        ".dllm-tok {white-space: pre; padding: 1px 2px; margin: 0 1px; border-radius: 3px;\n"
        "  border: 1px solid transparent;}\n"
        + "".join(f".dllm-{st} {{{_status_style(st)}}}\n" for st in STATUS_COLOURS)
        + ".dllm-special {opacity: 0.45;}\n"
        ".dllm-title {font-weight: bold; margin-bottom: 2px;}\n"
        "</style>")

_SPECIAL_TEXTS = frozenset({"[SEP]", "[PAD]", "[CLS]", "[UNK]"})


def _chip_text(token: str) -> str:
    """What a chip shows: the token with control characters as visible glyphs
    (``tokenizer.visible_text``) and newlines as an arrow."""
    return visible_text(token).replace("\n", NEWLINE_MARK)


def _chip_html(text: str, status: str, inline: bool = False) -> str:
    """One chip; ``inline`` adds the colours as a ``style`` attribute too (for viewers that
    drop ``<style>`` blocks)."""
    cls = f"dllm-tok dllm-{status}"
    if text in _SPECIAL_TEXTS:
        cls += " dllm-special"
    style = f' style="{_status_style(status)}"' if inline else ""
    chip = f'<span class="{cls}"{style}>{html.escape(_chip_text(text))}</span>'
    return chip + "<br>" if "\n" in text else chip


def render_tokens_html(
    tokens: Sequence[str], status: Sequence[str], attrs: dict | None = None
) -> str:
    """The answer area as HTML chips, one ``<span>`` per answer position.

    ``tokens[i]`` is the decoded text at position ``i`` (``"[MASK]"`` for masks) and
    ``status[i]`` one of ``STATUSES``: ``mask`` grey, ``new`` (set this step) green,
    ``done`` pale, ``remasked`` red outline, ``corrected`` orange (a committed token that
    changed), ``noise`` (Duo's random start) purple. Each chip is
    ``<span class="dllm-tok dllm-<status>">``, inside ``<div class="dllm-answer">``, so
    ``textContent`` of the div is the concatenated chip text. ``attrs`` become
    ``data-*`` attributes of the div.

    Taught in ``03_greedy_decoding``.
    """
    if len(tokens) != len(status):
        raise ValueError(
            f"tokens ({len(tokens)}) and status ({len(status)}) must have the same length"
        )
    chips = []
    for token, st in zip(tokens, status):
        if st not in STATUSES:
            raise ValueError(f"unknown status {st!r}; use one of {STATUSES}")
        text = MASK_TEXT if st in ("mask", "remasked") else str(token)
        chips.append(_chip_html(text, st))
    data = "".join(
        f' data-{key}="{html.escape(str(value), quote=True)}"'
        for key, value in (attrs or {}).items()
    )
    return f'{_CSS}<div class="dllm-answer"{data}>{"".join(chips)}</div>'


def _mask_id(tokenizer) -> int:
    mask_id = getattr(tokenizer, "mask_token_id", None)
    if mask_id is None:
        raise ValueError(
            "the tokenizer has no mask token (tokenizer.mask_token_id is None); "
            "load a tokenizer with a [MASK] token, e.g. load_model('tiny-dllm')"
        )
    return int(mask_id)


class _Decoder:
    """``tokenizer.decode([id])`` with a cache (pieces are decoded one id at a time)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.mask_id = _mask_id(tokenizer)
        self.cache: dict[int, str] = {}

    def __call__(self, token_id: int) -> str:
        token_id = int(token_id)
        if token_id == self.mask_id:
            return MASK_TEXT
        if token_id not in self.cache:
            self.cache[token_id] = self.tokenizer.decode([token_id])
        return self.cache[token_id]


def _check_k(steps, k: int) -> None:
    if not 0 <= k <= len(steps):
        raise ValueError(f"step k={k} is outside 0..{len(steps)} (0 is the initial state)")


def frame_tokens(
    steps: Sequence, k: int, mask_token_id: int, initial_tokens: Sequence[int] | None = None
) -> tuple[list[int], list[str]]:
    """Token ids and chip statuses of the answer area after step ``k`` (0 = start).

    Step 0 is all ``[MASK]`` for masked models, or ``initial_tokens`` (Duo's random start).
    After step ``k`` the ids are ``steps[k-1].tokens``; a position is ``remasked`` or
    ``corrected`` if that step says so, ``new`` if it was set in that step, ``noise`` if
    it still holds an untouched random start token, else ``done`` (or ``mask``).
    Only the ``Step`` attribute names are used (tokens, changed, remasked, corrected).

    Taught in ``03_greedy_decoding``.
    """
    _check_k(steps, k)
    if k == 0:
        if initial_tokens is not None:
            ids = [int(i) for i in initial_tokens]
        elif steps:
            ids = [mask_token_id] * len(steps[0].tokens)
        else:
            raise ValueError("no steps and no initial_tokens: nothing to show")
        return ids, ["mask" if i == mask_token_id else "noise" for i in ids]
    step = steps[k - 1]
    ids = [int(i) for i in step.tokens]
    touched: set[int] = set()
    if initial_tokens is not None:
        for s in steps[:k]:
            touched.update(s.changed)
            touched.update(s.corrected)
            touched.update(s.remasked)
    changed, remasked = set(step.changed), set(step.remasked)
    corrected = set(step.corrected)
    status = []
    for pos, tok in enumerate(ids):
        if tok == mask_token_id:
            status.append("remasked" if pos in remasked else "mask")
        elif pos in corrected:
            status.append("corrected")
        elif pos in changed:
            status.append("new")
        elif initial_tokens is not None and pos not in touched:
            status.append("noise")
        else:
            status.append("done")
    return ids, status


def _frame_pieces(steps, k, decode: _Decoder, initial_tokens=None):
    ids, status = frame_tokens(steps, k, decode.mask_id, initial_tokens)
    return [decode(i) for i in ids], status


def frame_text(steps: Sequence, k: int, tokenizer, initial_tokens=None) -> str:
    """The answer area after step ``k`` as plain text, ``[MASK]`` for masks (the seed's
    terminal picture), control characters as visible glyphs. Taught in ``03_greedy_decoding``.
    """
    pieces, _ = _frame_pieces(steps, k, _Decoder(tokenizer), initial_tokens)
    return visible_text("".join(pieces))


def _display_text(pieces: Sequence[str]) -> str:
    """What the browser's ``textContent`` of the rendered answer is."""
    return "".join(_chip_text(p) for p in pieces)


def frame_html(
    steps: Sequence, k: int, tokenizer, initial_tokens=None, _decode: _Decoder | None = None
) -> str:
    """HTML chips of the answer area after step ``k`` (0 = initial state).

    The div carries ``data-step`` (k), ``data-n`` (number of steps) and ``data-final`` (the
    text the last frame shows), so a browser test can tell when the animation ended and
    what it should read. Taught in ``03_greedy_decoding``.
    """
    decode = _decode or _Decoder(tokenizer)
    pieces, status = _frame_pieces(steps, k, decode, initial_tokens)
    final, _ = _frame_pieces(steps, len(steps), decode, initial_tokens)
    attrs = {"step": k, "n": len(steps), "final": _display_text(final)}
    return render_tokens_html(pieces, status, attrs)


class DemaskPlayer(widgets.VBox):
    """Watch de-masking step by step: ``Play`` + step slider + speed slider + answer chips.

    ``steps`` are ``Step`` records from ``dllm_lesson.sampling.decode_steps``. Step 0 is
    the initial state: all ``[MASK]``, or ``initial_tokens`` (Duo starts from random
    tokens). ``Play`` is linked to the step slider in the browser (``jslink``); the
    slider's change runs ``_on_step`` in the kernel, which re-renders the HTML widget.
    The player opens on frame ``start`` (default: the last, the answer), so a stored
    notebook shows the result; ``Play`` at the last frame starts again from step 0.
    The object *is* an ``ipywidgets.VBox`` (``DemaskPlayer(...)`` shows itself in a
    notebook); ``player.frames()`` works in plain Python.

    Without a kernel (a notebook viewer, an exported page, the course site) the same
    frames play from the output's ``text/html``: ``player.to_html()``, a self-contained
    HTML + JavaScript animation with a still ``player.filmstrip()`` image for viewers
    that strip scripts. Its display bundle holds both (``_repr_mimebundle_``).

    Taught in ``03_greedy_decoding``.
    """

    def __init__(
        self,
        steps: Sequence,
        tokenizer,
        title: str = "",
        initial_tokens: Sequence[int] | None = None,
        speed: float = 5.0,
        start: int | None = None,
    ):
        steps = list(steps)
        if not steps and initial_tokens is None:
            raise ValueError("DemaskPlayer needs at least one Step (or initial_tokens)")
        if not speed > 0:
            raise ValueError(f"speed is in steps per second and must be > 0, got {speed}")
        n = len(steps)
        start = n if start is None else start
        if isinstance(start, bool) or not isinstance(start, (int, np.integer)):
            raise ValueError(f"start is a step number 0..{n}, got {start!r}")
        start = int(start)
        _check_k(steps, start)
        self.steps = steps
        self.tokenizer = tokenizer
        self.title = title
        self.initial_tokens = None if initial_tokens is None else list(initial_tokens)
        self.start = start
        self._decode = _Decoder(tokenizer)
        self.html = widgets.HTML(value=self.frame_html(start))
        self.html.add_class("dllm-frame")
        self.play = widgets.Play(
            value=start, min=0, max=n, step=1, interval=max(1, int(1000 / speed))
        )
        self.slider = widgets.IntSlider(
            value=start, min=0, max=n, step=1, description="step", continuous_update=True
        )
        self.speed = widgets.FloatSlider(
            value=speed, min=0.5, max=max(30.0, speed), step=0.5, description="steps/s"
        )
        self.caption = widgets.HTML(value=self.caption_text(start))
        self.link = widgets.jslink((self.play, "value"), (self.slider, "value"))
        self.slider.observe(self._on_step, names="value")
        self.speed.observe(self._on_speed, names="value")
        children = [widgets.HBox([self.play, self.slider, self.speed]), self.caption]
        if title:
            children.insert(0, widgets.HTML(f'<div class="dllm-title">{html.escape(title)}'
                                            "</div>"))
        children.append(self.html)
        super().__init__(children=children)
        self.add_class("dllm-player")

    # kernel callbacks
    def _on_step(self, change) -> None:
        k = int(change["new"])
        self.html.value = self.frame_html(k)
        self.caption.value = self.caption_text(k)

    def _on_speed(self, change) -> None:
        self.play.interval = max(1, int(1000 / float(change["new"])))

    # pure views of the steps
    @property
    def n_steps(self) -> int:
        return len(self.steps)

    def frame_html(self, k: int) -> str:
        return frame_html(self.steps, k, self.tokenizer, self.initial_tokens, self._decode)

    def _caption_plain(self, k: int) -> str:
        _check_k(self.steps, k)
        n = len(self.steps)
        if k == 0:
            nfe, j = 0, 0
        else:
            step = self.steps[k - 1]
            nfe = int(step.nfe)
            j = len(set(step.changed) | set(step.corrected))
        return f"step {k} / {n} \u00b7 forward passes {nfe} \u00b7 tokens this step {j}"

    def caption_text(self, k: int) -> str:
        """``step k / n · forward passes m · tokens this step j``."""
        return f'<span class="dllm-caption">{self._caption_plain(k)}</span>'

    def _frame_chips(self, k: int) -> tuple[list[str], list[str]]:
        """Display texts (``[MASK]`` for masks) and statuses of frame ``k``."""
        pieces, status = _frame_pieces(self.steps, k, self._decode, self.initial_tokens)
        return ([MASK_TEXT if st in ("mask", "remasked") else p
                 for p, st in zip(pieces, status)], status)

    def frames(self) -> list[str]:
        """Plain text of every frame, 0..n (``[MASK]`` for masks; control characters of
        random tokens as visible glyphs, ``tokenizer.visible_text``)."""
        return [
            visible_text("".join(
                _frame_pieces(self.steps, k, self._decode, self.initial_tokens)[0]))
            for k in range(len(self.steps) + 1)
        ]

    def final_text(self) -> str:
        return self.frames()[-1]

    # kernel-free views
    def key_frames(self, count: int = 4) -> list[int]:
        """``count`` frames spread from 0 to n (both ends included), for the filmstrip."""
        if count < 2:
            raise ValueError(f"count must be >= 2 (first and last frame), got {count}")
        n = len(self.steps)
        return sorted({round(i * n / (count - 1)) for i in range(count)})

    def filmstrip(self, frames: Sequence[int] | None = None, width: float = 7.0) -> Figure:
        """A still image of some frames (default ``key_frames()``), one row each, chips in
        the player's colours, with a legend. Returns the Figure (for viewers that run no
        scripts; ``filmstrip_png()`` gives the PNG bytes)."""
        frames = self.key_frames() if frames is None else [int(k) for k in frames]
        if not frames:
            raise ValueError("filmstrip needs at least one frame")
        for k in frames:
            _check_k(self.steps, k)
        return _draw_filmstrip(self.title, [(f"step {k}", *self._frame_chips(k))
                                            for k in frames], width)

    def filmstrip_png(self, frames: Sequence[int] | None = None) -> bytes:
        """``filmstrip()`` as PNG bytes (a 64-colour palette: a few kB), identical for
        identical frames."""
        import io

        from PIL import Image

        buf = io.BytesIO()
        self.filmstrip(frames).savefig(buf, format="png", metadata={"Software": None})
        image = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
        out = io.BytesIO()
        image.quantize(colors=64, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE
                       ).save(out, format="PNG", optimize=True)
        return out.getvalue()

    def to_html(self, filmstrip: bool = True) -> str:
        """A self-contained HTML + JavaScript animation of every frame (no kernel, no CDN).

        Play / pause, step buttons and a step slider, the chips in the widget's colours,
        opening on frame ``start``; ``Play`` at the end starts again at 0. The answer div
        has the widget's ``data-step``/``data-n``/``data-final`` attributes. The element
        id comes from a hash of the frames, so the same player gives the same HTML. With
        ``filmstrip`` a PNG still (``filmstrip()``) follows, hidden when the script runs.
        """
        return _animation_html(self, filmstrip)

    def _repr_mimebundle_(self, **kwargs):
        """The widget view (live, with a kernel) plus a ``text/html`` animation for
        front ends that have no kernel or do not render widgets; ``text/plain`` names
        the player and its answer."""
        data = super()._repr_mimebundle_(**kwargs)
        data["text/html"] = self.to_html()
        title = f" {self.title!r}" if self.title else ""
        answer = getattr(self, "answer", None)   # set by animate_decoding
        end = f"answer {answer!r}" if answer is not None else f"final {self.final_text()!r}"
        data["text/plain"] = f"DemaskPlayer{title}: {len(self.steps)} steps, {end}"
        return data


_JS_PLAYER = """(function () {
  var script = document.currentScript;
  var root = script ? script.parentNode : document.getElementById(%(id)s);
  if (!root || root.dataset.ready) { return; }
  root.dataset.ready = '1';
  var data = JSON.parse(root.querySelector('script.dllm-data').textContent);
  var n = data.frames.length - 1;
  var answer = root.querySelector('.dllm-answer');
  var slider = root.querySelector('.dllm-slider');
  var caption = root.querySelector('.dllm-caption');
  var button = root.querySelector('.dllm-play');
  var timer = null;
  var still = root.querySelector('.dllm-filmstrip');
  if (still) { still.style.display = 'none'; }
  root.querySelector('.dllm-controls').style.display = '';
  function chip(c) {
    var span = document.createElement('span');
    span.className = 'dllm-tok dllm-' + data.statuses[c[1]] + (c[2] & 1 ? ' dllm-special' : '');
    span.setAttribute('style', data.styles[c[1]]);
    span.textContent = c[0];
    return span;
  }
  function show(k) {
    k = Math.max(0, Math.min(n, k));
    answer.textContent = '';
    data.frames[k].forEach(function (i) {
      var c = data.chips[i];
      answer.appendChild(chip(c));
      if (c[2] & 2) { answer.appendChild(document.createElement('br')); }
    });
    answer.dataset.step = String(k);
    slider.value = String(k);
    caption.textContent = data.captions[k];
  }
  function pause() {
    if (timer !== null) { clearInterval(timer); timer = null; }
    button.textContent = '\u25b6 play';
  }
  function tick() {
    var k = Number(answer.dataset.step) + 1;
    if (k > n) { pause(); return; }
    show(k);
    if (k >= n) { pause(); }
  }
  function play() {
    if (Number(answer.dataset.step) >= n) { show(0); }
    button.textContent = '\u275a\u275a pause';
    timer = setInterval(tick, data.interval);
  }
  button.addEventListener('click', function () {
    if (timer === null) { play(); } else { pause(); } });
  root.querySelector('.dllm-prev').addEventListener('click', function () {
    pause(); show(Number(answer.dataset.step) - 1); });
  root.querySelector('.dllm-next').addEventListener('click', function () {
    pause(); show(Number(answer.dataset.step) + 1); });
  slider.addEventListener('input', function () { pause(); show(Number(slider.value)); });
})();"""

_ANIM_CSS = """<style>
.dllm-anim {margin: 4px 0;}
.dllm-anim .dllm-controls {display: flex; align-items: center; gap: 6px; margin: 2px 0;
  font-family: sans-serif; font-size: 12px;}
.dllm-anim button {font-size: 12px; padding: 1px 8px; cursor: pointer;}
.dllm-anim .dllm-slider {flex: 0 1 260px;}
.dllm-anim .dllm-legend {font-family: sans-serif; font-size: 11px; color: #555;
  margin-top: 3px;}
.dllm-anim .dllm-legend .dllm-tok {font-family: monospace;}
.dllm-anim .dllm-filmstrip {max-width: 100%; display: block; margin-top: 4px;}
</style>"""


def _animation_html(player: DemaskPlayer, filmstrip: bool = True) -> str:
    """The kernel-free animation of ``player`` (see ``DemaskPlayer.to_html``)."""
    import base64
    import hashlib
    import json

    n = len(player.steps)
    # each distinct chip once: [shown text, status index, flags (1 special, 2 line break)]
    chips: list[list] = []
    index: dict[tuple, int] = {}
    frames, static = [], []
    for k in range(n + 1):
        pieces, status = player._frame_chips(k)
        row = []
        for text, st in zip(pieces, status):
            flags = (1 if text in _SPECIAL_TEXTS else 0) | (2 if "\n" in text else 0)
            key = (_chip_text(text), STATUSES.index(st), flags)
            if key not in index:
                index[key] = len(chips)
                chips.append(list(key))
            row.append(index[key])
            if k == player.start:
                static.append(_chip_html(text, st, inline=True))
        frames.append(row)
    captions = [player._caption_plain(k) for k in range(n + 1)]
    interval = max(1, int(player.play.interval))
    data = {"statuses": list(STATUSES), "styles": [_status_style(st) for st in STATUSES],
            "chips": chips, "frames": frames, "captions": captions, "interval": interval}
    payload = json.dumps(data, ensure_ascii=True, separators=(",", ":"))
    payload = payload.replace("</", "<\\/")
    digest = hashlib.sha1(
        (player.title + "\0" + str(player.start) + "\0" + payload).encode()
    ).hexdigest()[:12]
    anim_id = f"dllm-anim-{digest}"
    k0 = player.start
    final = _display_text(player._frame_chips(n)[0])
    answer = (f'<div class="dllm-answer" data-step="{k0}" data-n="{n}" '
              f'data-final="{html.escape(final, quote=True)}">'
              + "".join(static) + "</div>")
    title = (f'<div class="dllm-title">{html.escape(player.title)}</div>'
             if player.title else "")
    controls = (
        '<div class="dllm-controls" style="display: none">'
        '<button type="button" class="dllm-play">\u25b6 play</button>'
        '<button type="button" class="dllm-prev" title="previous step">\u2039</button>'
        '<button type="button" class="dllm-next" title="next step">\u203a</button>'
        f'<input type="range" class="dllm-slider" min="0" max="{n}" step="1" value="{k0}" '
        'aria-label="step">'
        f'<span class="dllm-caption">{html.escape(captions[k0])}</span></div>'
    )
    used = [st for i, st in enumerate(STATUSES) if any(c[1] == i for c in chips)]
    legend = ('<div class="dllm-legend">' + " ".join(
        f'<span class="dllm-tok dllm-{st}" style="{_status_style(st)}">'
        f"{html.escape(STATUS_LABELS[st])}</span>" for st in used) + "</div>")
    still = ""
    if filmstrip:
        png = base64.b64encode(player.filmstrip_png()).decode("ascii")
        alt = html.escape(f"key frames of the de-masking: {final}", quote=True)
        still = (f'<img class="dllm-filmstrip" alt="{alt}" '
                 f'src="data:image/png;base64,{png}">')
    script = _JS_PLAYER % {"id": json.dumps(anim_id)}
    return (f'{_CSS}{_ANIM_CSS}<div class="dllm-anim" id="{anim_id}">{title}{controls}'
            f'<div class="dllm-frame">{answer}</div>{legend}{still}'
            f'<script type="application/json" class="dllm-data">{payload}</script>'
            f"<script>{script}</script></div>")


def _draw_filmstrip(title: str, rows: list, width: float = 7.0) -> Figure:
    """Rows of chips (``(label, texts, statuses)``) drawn with matplotlib, wrapped to
    ``width`` inches. Monospace text: a chip is as wide as its characters."""
    font, char_w, line_h, label_w = 8.0, 8.0 * 0.6, 8.0 * 1.9, 48.0   # points
    width_pt = width * 72.0
    layout = []          # (label, [(x, line, text, status)], lines)
    for label, texts, status in rows:
        x, line, placed = label_w, 0, []
        for text, st in zip(texts, status):
            shown = _chip_text(text).replace(NEWLINE_MARK, NEWLINE_MARK + " ")
            w = max(1, len(shown)) * char_w + 3.0
            if x + w > width_pt - 4 and x > label_w:
                x, line = label_w, line + 1
            placed.append((x, line, shown, st))
            x += w + 1.5
        layout.append((label, placed, line + 1))
    legend_h = line_h * 1.2
    title_h = line_h * 1.3 if title else 0.0
    body = sum(lines for _, _, lines in layout) * line_h + (len(layout) - 1) * 5.0
    height_pt = title_h + body + legend_h + 8.0
    fig = Figure(figsize=(width, height_pt / 72.0), dpi=DPI)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, width_pt)
    ax.set_ylim(height_pt, 0)
    ax.axis("off")
    y = 4.0
    if title:
        ax.text(4, y + line_h * 0.5, title, fontsize=font + 1, fontweight="bold",
                va="center")
        y += title_h
    for label, placed, lines in layout:
        ax.text(4, y + line_h * 0.5, label, fontsize=font, va="center", color="#333")
        for x, line, shown, st in placed:
            bg, fg, border = STATUS_COLOURS[st]
            ax.text(x, y + (line + 0.5) * line_h, shown, fontsize=font, family="monospace",
                    va="center", ha="left", color=fg,
                    fontweight="bold" if st == "new" else "normal",   # no italic: the
                    bbox=dict(boxstyle="square,pad=0.15", fc=bg, ec=border or bg, lw=0.6))
        y += lines * line_h + 5.0      # oblique mono font lacks the ⌃ and � glyphs
    x = 4.0
    used = [st for st in STATUSES if any(st in status for _, _, status in rows)]
    for st in used:
        bg, fg, border = STATUS_COLOURS[st]
        label = STATUS_LABELS[st]
        ax.text(x, y + legend_h * 0.5, label, fontsize=font - 1, va="center", color=fg,
                bbox=dict(boxstyle="square,pad=0.15", fc=bg, ec=border or bg, lw=0.6))
        x += len(label) * (font - 1) * 0.55 + 14.0
    return fig


def show(steps: Sequence, tokenizer, title: str = "", initial_tokens=None, speed=5.0):
    """Display a ``DemaskPlayer`` in a notebook, or print its frames in plain Python.

    Taught in ``03_greedy_decoding``.
    """
    player = DemaskPlayer(steps, tokenizer, title, initial_tokens=initial_tokens,
                          speed=speed)
    if _in_notebook():
        from IPython.display import display

        display(player)
    else:
        for k, text in enumerate(player.frames()):
            print(f"{k:>4d} {text!r}")


class _RecordFirstInput:
    """Stands in for a model and keeps a copy of the ``input_ids`` of its first call.

    Duo's sampler starts from random tokens that no ``Step`` record holds; the first
    forward pass sees them, so the player can show them as step 0.
    """

    def __init__(self, model):
        self._model = model
        self.first_input_ids = None

    def __getattr__(self, name):
        return getattr(self._model, name)

    def __call__(self, *args, **kwargs):
        if self.first_input_ids is None:
            ids = kwargs.get("input_ids", args[0] if args else None)
            if ids is not None:
                self.first_input_ids = ids.detach().clone()             # (B, L)
        return self._model(*args, **kwargs)


def animate_decoding(
    model,
    tokenizer,
    prompt: str,
    strategy: str = "greedy",
    answer_length: int = 32,
    title: str | None = None,
    initial_tokens=None,
    speed: float = 5.0,
    **options,
):
    """Decode ``prompt`` with ``strategy`` and return a ``DemaskPlayer`` of every step.

    Runs ``dllm_lesson.sampling.decode_steps(model, tokenizer, prompt, answer_length,
    strategy, **options)`` and collects its ``Step`` records (``player.steps``); the
    decoded answer is ``player.answer``. For ``"duo"`` step 0 shows the sampler's random
    start, read from the model's first forward pass (or pass ``initial_tokens``). In
    plain Python use ``player.frames()``.

    Taught in ``03_greedy_decoding`` and ``09_duo_sampling``.
    """
    from dllm_lesson.sampling import answer_text, build_sequence, decode_steps

    record = strategy == "duo" and initial_tokens is None
    runner = _RecordFirstInput(model) if record else model
    steps = list(decode_steps(runner, tokenizer, prompt, answer_length=answer_length,
                              strategy=strategy, **options))
    if record and runner.first_input_ids is not None:
        _, a0 = build_sequence(tokenizer, prompt, answer_length)
        initial_tokens = runner.first_input_ids[0, a0:a0 + answer_length].tolist()
    if title is None:
        title = f"{strategy}: {prompt}"
    player = DemaskPlayer(steps, tokenizer, title=title, initial_tokens=initial_tokens,
                          speed=speed)
    player.answer = answer_text(tokenizer, steps[-1].tokens) if steps else ""
    return player


# ---------------------------------------------------------------------------------------
# plots
# ---------------------------------------------------------------------------------------


def _figure(ax=None, figsize=FIGSIZE, ncols: int = 1):
    """A new unmanaged Figure (shown once, when returned) or the given axes' figure."""
    if ax is not None:
        return ax.figure, ax
    fig = Figure(figsize=figsize, dpi=DPI, layout="constrained")
    axes = fig.subplots(1, ncols)
    return fig, axes


def _commit_steps(steps: Sequence) -> np.ndarray:
    """(L,) the step at which each position was last committed; 0 = never or re-masked."""
    length = len(steps[0].tokens)
    order = np.zeros(length, dtype=int)
    for s in steps:
        for pos in list(s.changed) + list(s.corrected):
            order[pos] = s.step
        for pos in s.remasked:
            order[pos] = 0
    return order


def confidence_heatmap(steps: Sequence, ax=None, title: str = "model confidence"):
    """Step × position image of ``Step.confidence``; a dot where a token was committed.

    Row ``s`` is the max probability of the model's prediction at every answer position
    during step ``s``; white dots mark the positions set in that step (``changed``), red
    crosses positions re-masked. Returns the Figure.

    Taught in ``03_greedy_decoding``.
    """
    if not steps:
        raise ValueError("confidence_heatmap needs at least one Step")
    conf = np.array([s.confidence for s in steps], dtype=float)  # (S, L)
    n_steps, length = conf.shape
    fig, ax = _figure(ax)
    # extent puts row r at y = r + 1, the step number
    im = ax.imshow(conf, aspect="auto", interpolation="nearest", vmin=0.0, vmax=1.0,
                   cmap="viridis", extent=(-0.5, length - 0.5, n_steps + 0.5, 0.5))
    cols = [pos for s in steps for pos in s.changed]
    rows = [r + 1 for r, s in enumerate(steps) for _ in s.changed]
    ax.scatter(cols, rows, s=12, c="white", edgecolors="black", linewidths=0.5,
               label="committed")
    rcols = [pos for s in steps for pos in s.remasked]
    rrows = [r + 1 for r, s in enumerate(steps) for _ in s.remasked]
    if rrows:
        ax.scatter(rcols, rrows, s=20, c="red", marker="x", label="re-masked")
    ax.set_xlabel("answer position")
    ax.set_ylabel("step")
    ax.set_title(title)
    ax.grid(False)
    fig.colorbar(im, ax=ax, label="confidence")
    return fig


def decode_order_plot(steps: Sequence, ax=None,
                      title: str = "when each position was decided"):
    """Bar per answer position: the step at which it was (last) committed.

    Greedy confidence decoding fills the easy positions first, not left to right; block
    decoding gives a staircase. Positions never committed get no bar. Returns the Figure.

    Taught in ``03_greedy_decoding`` and ``04_block_generation_and_kv_cache``.
    """
    if not steps:
        raise ValueError("decode_order_plot needs at least one Step")
    order = _commit_steps(steps)  # (L,)
    blocks = np.zeros(len(order), dtype=int)
    for s in steps:
        for pos in s.changed:
            blocks[pos] = getattr(s, "block", 0)
    fig, ax = _figure(ax)
    colors = [f"C{b % 10}" for b in blocks]
    ax.bar(np.arange(len(order)), order, color=colors, width=0.9)
    ax.set_xlabel("answer position")
    ax.set_ylabel("step committed")
    ax.set_title(title)
    ax.set_ylim(0, max(1, len(steps)) + 0.5)
    return fig


def plot_accuracy_vs_mask_ratio(results: dict, ax=None, title: str = "fill-in accuracy"):
    """One line per model: accuracy of filling masked tokens vs the fraction masked.

    ``results`` maps a name to ``(ratios, accs)``. BERT's 15 % training collapses at high
    ratios; variable masking does not. Returns the Figure.

    Taught in ``01_bert_masking`` and ``02_llada_training``.
    """
    if not results:
        raise ValueError("results is empty: pass {name: (ratios, accuracies)}")
    fig, ax = _figure(ax)
    for name, (ratios, accs) in results.items():
        ratios, accs = np.asarray(ratios, dtype=float), np.asarray(accs, dtype=float)
        if ratios.shape != accs.shape:
            raise ValueError(f"{name}: ratios {ratios.shape} and accs {accs.shape} differ")
        ax.plot(ratios, accs, marker="o", label=str(name))
    ax.set_xlabel("mask ratio")
    ax.set_ylabel("accuracy on masked tokens")
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.legend()
    return fig


def plot_flip_probability(
    noise, analytic: dict, monte_carlo: dict | None = None, ax=None,
    xlabel: str = "noise weight", title: str = "P(argmax flips)",
):
    """Flip probability curves: lines for the analytic formula, dots for Monte Carlo.

    ``analytic`` and ``monte_carlo`` map a label (e.g. ``"V=8"``) to an array of
    probabilities over ``noise``; matching labels share a colour. Returns the Figure.

    Taught in ``06_duo_gaussian_noise``.
    """
    noise = np.asarray(noise, dtype=float)
    fig, ax = _figure(ax)
    for i, (label, probs) in enumerate(analytic.items()):
        ax.plot(noise, np.asarray(probs, dtype=float), color=f"C{i}", label=f"{label}")
        if monte_carlo and label in monte_carlo:
            ax.plot(noise, np.asarray(monte_carlo[label], dtype=float), "o", color=f"C{i}",
                    markersize=4, label=f"{label} (Monte Carlo)")
    for label in (monte_carlo or {}):
        if label not in analytic:
            raise ValueError(f"monte_carlo label {label!r} has no analytic curve")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("flip probability")
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.legend(fontsize=8)
    return fig


def plot_tau_schedule(steps, tau, ax=None, title: str = "soft-token temperature \u03c4"):
    """τ against training step (soft tokens ``softmax(w / τ)`` sharpen as τ → 0).

    Returns the Figure. Taught in ``07_soft_tokens``.
    """
    steps, tau = np.asarray(steps, dtype=float), np.asarray(tau, dtype=float)
    if steps.shape != tau.shape:
        raise ValueError(f"steps {steps.shape} and tau {tau.shape} must match")
    fig, ax = _figure(ax)
    ax.plot(steps, tau)
    ax.set_xlabel("training step")
    ax.set_ylabel("\u03c4")
    ax.set_yscale("log")
    ax.set_title(title)
    return fig


def plot_row_scale(
    noise, scale, grad_raw=None, grad_scaled=None, xlabel: str = "noise level",
):
    """Per-row loss scale ``noise / (V·clean + noise)`` and, if given, gradient sizes.

    Left: the scale against the row's noise level. Right (when ``grad_raw`` is given):
    the per-row gradient norm without and with the scale, log y: scaling makes the rows'
    gradients comparable. Returns the Figure.

    Taught in ``08_duo_loss_scaling``.
    """
    noise, scale = np.asarray(noise, dtype=float), np.asarray(scale, dtype=float)
    if noise.shape != scale.shape:
        raise ValueError(f"noise {noise.shape} and scale {scale.shape} differ")
    ncols = 1 if grad_raw is None else 2
    fig, axes = _figure(None, figsize=(FIGSIZE[0] * (1 + 0.6 * (ncols - 1)), FIGSIZE[1]),
                        ncols=ncols)
    ax = axes if ncols == 1 else axes[0]
    ax.plot(noise, scale)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("row scale")
    ax.set_title("per-row scale")
    if grad_raw is not None:
        ax2 = axes[1]
        ax2.plot(noise, np.asarray(grad_raw, dtype=float), "o-", markersize=3,
                 label="unscaled")
        if grad_scaled is not None:
            ax2.plot(noise, np.asarray(grad_scaled, dtype=float), "o-", markersize=3,
                     label="scaled")
        ax2.set_yscale("log")
        ax2.set_xlabel(xlabel)
        ax2.set_ylabel("gradient norm per row")
        ax2.set_title("gradient size")
        ax2.legend()
    return fig


class LiveLossPlot:
    """A training curve that redraws in place (d2l's ProgressBoard idea).

    ``update(step, loss)`` records a point; at most every ``min_seconds`` (and every
    ``every`` points) it redraws. In a notebook the figure is shown once and then updated
    in place through its display handle (so the cell keeps exactly one output, which
    nbval can compare); elsewhere a line is printed. ``finish()`` draws the final curve.
    Extra curves: ``update(step, loss, name="eval")``.

    Taught in ``02_llada_training``.
    """

    def __init__(self, title: str = "training loss", every: int = 1,
                 min_seconds: float = 0.5, logy: bool = False,
                 notebook: bool | None = None):
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.title, self.every, self.logy = title, every, logy
        self.min_seconds = min_seconds
        self.notebook = _in_notebook() if notebook is None else notebook
        self.points: dict[str, tuple[list[float], list[float]]] = {}
        self._since = 0
        self._last = -math.inf
        self.redraws = 0
        self._handle = None  # IPython DisplayHandle once the figure is shown
        self.fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
        self.ax = self.fig.subplots()

    def update(self, step, loss, name: str = "loss") -> None:
        xs, ys = self.points.setdefault(name, ([], []))
        xs.append(float(step))
        ys.append(float(loss))
        self._since += 1
        now = time.monotonic()
        if self._since >= self.every and now - self._last >= self.min_seconds:
            self._draw(step, loss, name)
            self._last, self._since = now, 0

    def _redraw_figure(self) -> Figure:
        ax = self.ax
        ax.clear()
        for name, (xs, ys) in self.points.items():
            ax.plot(xs, ys, label=name)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.set_title(self.title)
        if self.logy:
            ax.set_yscale("log")
        if len(self.points) > 1:
            ax.legend()
        return self.fig

    def _show(self, fig: Figure) -> None:
        if self._handle is None:
            from IPython.display import display

            self._handle = display(fig, display_id=True)
        else:
            self._handle.update(fig)

    def _draw(self, step, loss, name) -> None:
        self.redraws += 1
        if self.notebook:
            self._show(self._redraw_figure())
        else:
            print(f"step {step:>7} {name} {float(loss):.4f}", flush=True)

    def finish(self) -> Figure:
        """Draw the final curve (always) and return the Figure."""
        fig = self._redraw_figure()
        if self.notebook:
            self._show(fig)
        elif self.points:
            name = list(self.points)[-1]
            xs, ys = self.points[name]
            print(f"step {xs[-1]:>7g} {name} {ys[-1]:.4f} (final)", flush=True)
        return fig


class _Table:
    """A small table with both an HTML and a text view (nbval compares the text)."""

    def __init__(self, header: list[str], rows: list[list[str]]):
        self.header, self.rows = header, rows

    def __str__(self) -> str:
        widths = [max(len(h), *(len(r[i]) for r in self.rows)) if self.rows else len(h)
                  for i, h in enumerate(self.header)]
        line = "  ".join(h.ljust(w) for h, w in zip(self.header, widths))
        sep = "  ".join("-" * w for w in widths)
        body = ["  ".join(c.rjust(w) if i else c.ljust(w)
                          for i, (c, w) in enumerate(zip(r, widths))) for r in self.rows]
        return "\n".join([line, sep, *body])

    __repr__ = __str__

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in self.header)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>"
            for r in self.rows
        )
        return (f'<table class="dllm-table"><thead><tr>{head}</tr></thead>'
                f"<tbody>{body}</tbody></table>")


def _fmt(value) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if math.isnan(v):
            return "nan"
        return f"{v:.3f}" if abs(v) < 1 else f"{v:.2f}"
    return str(value)


BENCH_COLUMNS = ("strategy", "answer_length", "nfe", "tokens_per_nfe", "seconds",
                 "speedup_vs_greedy", "accuracy")


def strategy_table(rows: Iterable[dict], columns: Sequence[str] | None = None):
    """A table of ``bench`` rows (dicts), shown as HTML in a notebook, text elsewhere.

    Columns default to the bench keys present in the rows (``strategy, answer_length,
    nfe, tokens_per_nfe, seconds, speedup_vs_greedy, accuracy``), then any others.

    Taught in ``05_remasking_and_parallel_decoding``.
    """
    rows = [dict(r) for r in rows]
    if not rows:
        raise ValueError("strategy_table needs at least one row")
    if columns is None:
        keys: list[str] = []
        for r in rows:
            keys.extend(k for k in r if k not in keys)
        columns = [c for c in BENCH_COLUMNS if c in keys]
        columns += [k for k in keys if k not in columns]
    return _Table(list(columns), [[_fmt(r.get(c, "")) for c in columns] for r in rows])
