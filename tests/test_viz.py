"""Widgets and plots without a front end: frames, the kernel callback, figures.

The browser side (Play really driving the callback in JupyterLab) is tests/test_browser.py.
"""

from __future__ import annotations

import random
import re
import warnings
from dataclasses import dataclass, field
from html.parser import HTMLParser

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from dllm_lesson import viz  # noqa: E402
from dllm_lesson.tokenizer import visible_text  # noqa: E402

try:
    from dllm_lesson.sampling import Step
except ImportError:  # the decoding engine not written yet: same field names

    @dataclass
    class Step:
        step: int
        tokens: list
        changed: list = field(default_factory=list)
        remasked: list = field(default_factory=list)
        corrected: list = field(default_factory=list)
        confidence: list = field(default_factory=list)
        nfe: int = 0
        block: int = 0


MASK = 4


class FakeTokenizer:
    mask_token_id = MASK
    pieces = {3: "[SEP]", 10: "The", 11: " capital", 12: " of", 13: " France", 14: " is",
              15: " Paris", 16: "\n", 17: " <b>&", 20: " zebra", 21: " blue"}

    def __init__(self):
        self.calls = 0

    def decode(self, ids):
        self.calls += 1
        return "".join(self.pieces[i] for i in ids)


FINAL = [10, 11, 12, 13, 14, 15, 16, 3]
ORDER = [5, 0, 3, 1, 4, 2, 6, 7]


def greedy_steps(final=FINAL, order=ORDER):
    """One token per step in ``order``, like the seed's greedy decoder."""
    tokens, steps = [MASK] * len(final), []
    for i, pos in enumerate(order):
        tokens = list(tokens)
        tokens[pos] = final[pos]
        conf = [0.1 * (j + 1) % 1.0 for j in range(len(final))]
        steps.append(Step(step=i + 1, tokens=tokens, changed=[pos], confidence=conf,
                          nfe=i + 1, block=0))
    return steps


class Chips(HTMLParser):
    """Independent reading of the answer HTML: the div's data attributes and each chip's
    (status, text), plus the text a browser's ``textContent`` would give."""

    def __init__(self, markup: str):
        super().__init__(convert_charrefs=True)
        self.attrs: dict[str, str] = {}
        self.chips: list[list[str]] = []
        self._in_chip = False
        self._in_style = False
        self.feed(markup)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        classes = (attrs.get("class") or "").split()
        if tag == "style":
            self._in_style = True
        if tag == "div" and "dllm-answer" in classes:
            self.attrs = {k[5:]: v for k, v in attrs.items() if k.startswith("data-")}
        if tag == "span" and "dllm-tok" in classes:
            status = [c[5:] for c in classes if c.startswith("dllm-")
                      and c not in ("dllm-tok", "dllm-special")]
            assert len(status) == 1, classes
            self.chips.append([status[0], ""])
            self._in_chip = True

    def handle_endtag(self, tag):
        if tag == "span":
            self._in_chip = False
        if tag == "style":
            self._in_style = False

    def handle_data(self, data):
        if self._in_chip:
            self.chips[-1][1] += data

    @property
    def status(self):
        return [s for s, _ in self.chips]

    @property
    def text(self):
        return "".join(t for _, t in self.chips)


# ---------------------------------------------------------------------------------------
# frames
# ---------------------------------------------------------------------------------------


def test_frame_zero_is_all_masks_and_last_frame_is_the_answer():
    steps, tok = greedy_steps(), FakeTokenizer()
    first = Chips(viz.frame_html(steps, 0, tok))
    assert first.status == ["mask"] * 8
    assert first.text == "[MASK]" * 8
    last = Chips(viz.frame_html(steps, len(steps), tok))
    assert "mask" not in last.status
    assert last.text == "The capital of France is Paris\u21b5[SEP]"  # newline shown as ↵
    # the browser test compares textContent with data-final
    assert first.attrs["final"] == last.text
    assert (first.attrs["step"], first.attrs["n"]) == ("0", "8")
    assert last.attrs["step"] == "8"
    assert viz.frame_text(steps, 8, tok) == "The capital of France is Paris\n[SEP]"


def test_every_frame_matches_a_slow_replay():
    steps, tok = greedy_steps(), FakeTokenizer()
    shown = ["[MASK]"] * 8
    for k in range(len(steps) + 1):
        if k:
            pos = ORDER[k - 1]
            shown[pos] = tok.pieces[FINAL[pos]]
        chips = Chips(viz.frame_html(steps, k, tok))
        assert chips.text == "".join(shown).replace("\n", "\u21b5")
        expected = ["mask" if s == "[MASK]" else "done" for s in shown]
        if k:
            expected[ORDER[k - 1]] = "new"
        assert chips.status == expected
        assert viz.frame_text(steps, k, tok) == "".join(shown)


def test_remasked_corrected_and_noise_chips():
    tok = FakeTokenizer()
    steps = [
        Step(1, [10, 20, MASK], changed=[0, 1], confidence=[0.9, 0.2, 0.1], nfe=1),
        Step(2, [10, MASK, 13], changed=[2], remasked=[1], confidence=[0.9, 0.1, 0.8],
             nfe=2),
        Step(3, [10, 11, 12], changed=[1, 2], corrected=[2], confidence=[1, 1, 1], nfe=3),
    ]
    chips = Chips(viz.frame_html(steps, 2, tok))
    assert chips.status == ["done", "remasked", "new"]
    assert chips.text == "The[MASK] France"
    chips = Chips(viz.frame_html(steps, 3, tok))
    assert chips.status == ["done", "new", "corrected"]
    markup = viz.frame_html(steps, 2, tok)
    assert 'class="dllm-tok dllm-remasked"' in markup
    assert 'class="dllm-tok dllm-corrected"' in viz.frame_html(steps, 3, tok)

    # Duo: step 0 shows the random start; untouched start tokens stay "noise"
    start = [20, 21, 20]
    duo = [Step(1, [10, 21, 20], changed=[0], nfe=1),
           Step(2, [10, 21, 13], changed=[2], nfe=2)]
    assert Chips(viz.frame_html(duo, 0, tok, start)).status == ["noise"] * 3
    assert Chips(viz.frame_html(duo, 0, tok, start)).text == " zebra blue zebra"
    assert Chips(viz.frame_html(duo, 2, tok, start)).status == ["done", "noise", "new"]


def test_render_escapes_text_and_rejects_bad_input():
    markup = viz.render_tokens_html([" <b>&", "[SEP]"], ["new", "done"])
    assert "<b>" not in markup.split("</style>")[1]
    chips = Chips(markup)
    assert chips.text == " <b>&[SEP]"
    assert 'class="dllm-tok dllm-done dllm-special"' in markup  # end tokens dimmed
    with pytest.raises(ValueError, match="same length"):
        viz.render_tokens_html(["a"], [])
    with pytest.raises(ValueError, match="unknown status"):
        viz.render_tokens_html(["a"], ["bold"])
    with pytest.raises(ValueError, match="outside 0..8"):
        viz.frame_html(greedy_steps(), 9, FakeTokenizer())

    class NoMask:
        mask_token_id = None

    with pytest.raises(ValueError, match="no mask token"):
        viz.frame_html(greedy_steps(), 0, NoMask())


# ---------------------------------------------------------------------------------------
# the player widget (no front end: the kernel side of the callback)
# ---------------------------------------------------------------------------------------


def test_slider_change_rerenders_the_answer():
    steps, tok = greedy_steps(), FakeTokenizer()
    player = viz.DemaskPlayer(steps, tok, title="greedy", speed=4)
    # stored at the answer (what a saved notebook shows), not at the all-mask step 0
    opened = Chips(player.html.value)
    assert opened.attrs["step"] == "8" and opened.text == opened.attrs["final"]
    assert (player.play.value, player.slider.value) == (8, 8)
    assert "step 8 / 8" in player.caption.value
    player.slider.value = 3  # what Play (jslink'ed in the browser) does
    chips = Chips(player.html.value)
    assert chips.attrs["step"] == "3"
    assert chips.text == "The[MASK][MASK] France[MASK] Paris[MASK][MASK]"
    assert chips.status == ["done", "mask", "mask", "new", "mask", "done", "mask", "mask"]
    assert "step 3 / 8" in player.caption.value
    assert "forward passes 3" in player.caption.value
    assert "tokens this step 1" in player.caption.value
    player.slider.value = 8
    assert Chips(player.html.value).text == Chips(player.html.value).attrs["final"]
    player.slider.value = 0
    assert Chips(player.html.value).status == ["mask"] * 8


def test_player_is_wired_for_the_browser():
    import ipywidgets as widgets

    player = viz.DemaskPlayer(greedy_steps(), FakeTokenizer(), speed=4)
    assert isinstance(player, widgets.VBox)
    assert "dllm-player" in player._dom_classes
    assert isinstance(player.link, widgets.widget_link.Link)  # jslink: a front-end link
    assert player.link.source == (player.play, "value")
    assert player.link.target == (player.slider, "value")
    assert (player.play.min, player.play.max) == (0, 8)
    assert (player.slider.min, player.slider.max) == (0, 8)
    assert player.play.interval == 250
    player.speed.value = 10.0
    assert player.play.interval == 100
    with pytest.raises(ValueError, match="speed"):
        viz.DemaskPlayer(greedy_steps(), FakeTokenizer(), speed=0)
    with pytest.raises(ValueError, match="at least one Step"):
        viz.DemaskPlayer([], FakeTokenizer())


def test_player_opens_on_the_frame_asked_for():
    steps = greedy_steps()
    middle = viz.DemaskPlayer(steps, FakeTokenizer(), start=4)
    assert Chips(middle.html.value).attrs["step"] == "4"
    assert (middle.play.value, middle.slider.value) == (4, 4)
    assert Chips(viz.DemaskPlayer(steps, FakeTokenizer(), start=0).html.value).status \
        == ["mask"] * 8
    for bad in (9, -1, 2.5, True, "end"):
        with pytest.raises(ValueError, match="start|step k"):
            viz.DemaskPlayer(steps, FakeTokenizer(), start=bad)


def test_frames_in_plain_python_and_decode_cache():
    tok = FakeTokenizer()
    player = viz.DemaskPlayer(greedy_steps(), tok)
    frames = player.frames()
    assert len(frames) == 9
    assert frames[0] == "[MASK]" * 8
    assert frames[1] == "[MASK]" * 5 + " Paris" + "[MASK]" * 2
    assert frames[-1] == player.final_text() == "The capital of France is Paris\n[SEP]"
    assert tok.calls <= len(set(FINAL))  # each id decoded once, then cached


def test_show_prints_frames_outside_a_notebook(capsys):
    viz.show(greedy_steps(), FakeTokenizer())
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 9
    assert out[0].split(None, 1) == ["0", repr("[MASK]" * 8)]


# ---------------------------------------------------------------------------------------
# animate_decoding on the real engine and a random tiny ModernBERT
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model(tiny_modernbert_dir, course_tokenizer):
    from transformers import AutoModelForMaskedLM

    return AutoModelForMaskedLM.from_pretrained(str(tiny_modernbert_dir)).eval()


def test_animate_decoding_greedy(tiny_model, course_tokenizer):
    sampling = pytest.importorskip("dllm_lesson.sampling")
    player = viz.animate_decoding(tiny_model, course_tokenizer, "Capital of France?",
                                  answer_length=6)
    frames = player.frames()
    assert len(frames) == 7 and len(player.steps) == 6
    assert frames[0] == "[MASK]" * 6
    assert "[MASK]" not in frames[-1]
    pieces = [course_tokenizer.decode([i]) for i in player.steps[-1].tokens]
    assert frames[-1] == visible_text("".join(pieces))
    assert player.answer == sampling.generate(tiny_model, course_tokenizer,
                                              "Capital of France?", answer_length=6)
    for k in range(1, 7):  # one new token per greedy step
        assert frames[k - 1].count("[MASK]") - frames[k].count("[MASK]") == 1


def test_animate_decoding_duo_shows_the_random_start(tiny_model, course_tokenizer):
    pytest.importorskip("dllm_lesson.sampling")
    player = viz.animate_decoding(tiny_model, course_tokenizer, "Capital of France?",
                                  strategy="duo", answer_length=6, steps=3)
    start, first = player.initial_tokens, player.steps[0]
    assert start is not None and len(start) == 6
    assert course_tokenizer.mask_token_id not in start
    # step 1's ``changed`` is exactly where its tokens differ from the recorded start
    assert first.changed == [i for i in range(6) if first.tokens[i] != start[i]]
    assert set(Chips(player.frame_html(0)).status) == {"noise"}
    assert "[MASK]" not in player.frames()[0]


# ---------------------------------------------------------------------------------------
# setup
# ---------------------------------------------------------------------------------------


def test_setup_seeds_quietly_and_restorably(capsys):
    import torch

    threads = torch.get_num_threads()
    try:
        with matplotlib.rc_context(), warnings.catch_warnings(), np.printoptions():
            assert viz.setup(7) is None
            a = (random.random(), np.random.rand(), torch.rand(1).item())
            viz.setup(7)
            b = (random.random(), np.random.rand(), torch.rand(1).item())
            assert a == b
            assert torch.get_num_threads() <= 2
            assert tuple(matplotlib.rcParams["figure.figsize"]) == viz.FIGSIZE
            assert matplotlib.rcParams["svg.hashsalt"] == "dllm_lesson"
            with pytest.raises(ValueError, match="int"):
                viz.setup("0")
        assert capsys.readouterr() == ("", "")
    finally:
        torch.set_num_threads(threads)
        torch.set_printoptions(profile="default")


# ---------------------------------------------------------------------------------------
# plots: figures with the expected artists
# ---------------------------------------------------------------------------------------


def test_confidence_heatmap_artists():
    steps = greedy_steps()
    fig = viz.confidence_heatmap(steps)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert len(fig.axes) == 2  # the image and its colorbar
    assert len(ax.images) == 1
    image = np.asarray(ax.images[0].get_array())
    assert image.shape == (8, 8)
    np.testing.assert_allclose(image, np.array([s.confidence for s in steps]))
    (dots,) = ax.collections  # committed positions, one per step
    np.testing.assert_array_equal(dots.get_offsets(),
                                  [[p, k + 1] for k, p in enumerate(ORDER)])
    remask = steps + [Step(9, list(FINAL[:7]) + [MASK], remasked=[7],
                           confidence=[0.5] * 8, nfe=9)]
    assert len(viz.confidence_heatmap(remask).axes[0].collections) == 2


def test_decode_order_plot_heights():
    steps = greedy_steps()
    fig = viz.decode_order_plot(steps)
    bars = fig.axes[0].patches
    assert len(bars) == 8
    expected = [ORDER.index(pos) + 1 for pos in range(8)]  # step that set each position
    assert [b.get_height() for b in bars] == expected
    # a re-masked position counts from its last commit; never committed -> no bar
    steps = [Step(1, [10, MASK], changed=[0], confidence=[1, 0]),
             Step(2, [MASK, 11], changed=[1], remasked=[0], confidence=[0, 1])]
    assert [b.get_height() for b in viz.decode_order_plot(steps).axes[0].patches] == [0, 2]


def test_line_plots_have_one_line_per_curve():
    fig = viz.plot_accuracy_vs_mask_ratio(
        {"tiny-bert": ([0.15, 0.5, 0.9], [0.8, 0.4, 0.1]),
         "tiny-dllm": ([0.15, 0.5, 0.9], [0.8, 0.7, 0.5])})
    ax = fig.axes[0]
    assert [line.get_label() for line in ax.lines] == ["tiny-bert", "tiny-dllm"]
    np.testing.assert_allclose(ax.lines[1].get_ydata(), [0.8, 0.7, 0.5])

    w = np.linspace(0, 3, 7)
    fig = viz.plot_flip_probability(w, {"V=2": w / 6, "V=8": w / 4},
                                    monte_carlo={"V=8": w / 4 + 0.01})
    assert len(fig.axes[0].lines) == 3
    with pytest.raises(ValueError, match="no analytic curve"):
        viz.plot_flip_probability(w, {"V=2": w}, monte_carlo={"V=3": w})

    fig = viz.plot_tau_schedule(np.arange(5), np.geomspace(1, 0.01, 5))
    assert len(fig.axes[0].lines) == 1 and fig.axes[0].get_yscale() == "log"

    noise = np.linspace(0.1, 1, 5)
    assert len(viz.plot_row_scale(noise, noise / (8 + noise)).axes) == 1
    fig = viz.plot_row_scale(noise, noise / (8 + noise), grad_raw=1 / noise,
                             grad_scaled=np.ones(5))
    assert len(fig.axes) == 2 and len(fig.axes[1].lines) == 2
    with pytest.raises(ValueError, match="results is empty"):
        viz.plot_accuracy_vs_mask_ratio({})


def test_plots_draw_into_given_axes():
    fig = Figure()
    ax = fig.subplots()
    assert viz.decode_order_plot(greedy_steps(), ax=ax) is fig
    assert len(ax.patches) == 8


# ---------------------------------------------------------------------------------------
# live loss and the strategy table
# ---------------------------------------------------------------------------------------


def test_live_loss_plot_text_fallback_is_throttled(capsys):
    live = viz.LiveLossPlot(every=10, min_seconds=0.0, notebook=False)
    for step in range(1, 31):
        live.update(step, 1.0 / step)
    out = capsys.readouterr().out.splitlines()
    assert out == ["step      10 loss 0.1000", "step      20 loss 0.0500",
                   "step      30 loss 0.0333"]
    fig = live.finish()
    np.testing.assert_allclose(fig.axes[0].lines[0].get_ydata(), 1 / np.arange(1, 31))
    assert "final" in capsys.readouterr().out


def test_live_loss_plot_redraws_in_place_in_a_notebook(monkeypatch):
    import IPython.display

    calls = []

    class Handle:
        def update(self, obj):
            calls.append(("update", obj))

    def fake_display(obj, display_id=False):
        calls.append(("show", obj, display_id))
        return Handle()

    monkeypatch.setattr(IPython.display, "display", fake_display)
    live = viz.LiveLossPlot(every=1, min_seconds=3600.0, notebook=True)
    for step in range(5):
        live.update(step, 2.0 - step / 10)
        live.update(step, 2.5, name="eval")
    assert live.redraws == 1  # throttled by time: only the first point drew
    assert calls == [("show", live.fig, True)]  # shown once, with a display handle
    live.finish()
    assert calls[-1] == ("update", live.fig)  # the final curve replaces it in place
    assert len(calls) == 2
    assert [line.get_label() for line in live.fig.axes[0].lines] == ["loss", "eval"]


def test_live_loss_plot_finish_shows_a_figure_that_was_never_drawn(monkeypatch):
    import IPython.display

    calls = []
    monkeypatch.setattr(IPython.display, "display",
                        lambda obj, display_id=False: calls.append(obj) or object())
    live = viz.LiveLossPlot(every=100, notebook=True)
    live.update(0, 1.0)
    assert calls == []
    live.finish()
    assert calls == [live.fig]


def test_strategy_table_text_and_html():
    rows = [
        {"strategy": "greedy", "answer_length": 256, "nfe": 256, "tokens_per_nfe": 1.0,
         "seconds": 30.5, "speedup_vs_greedy": 1.0, "accuracy": 0.95},
        {"accuracy": 0.94, "strategy": "threshold+dual", "answer_length": 256, "nfe": 40,
         "tokens_per_nfe": 6.4, "seconds": 2.25, "speedup_vs_greedy": 13.6, "note": "x"},
    ]
    table = viz.strategy_table(rows)
    lines = str(table).splitlines()
    assert lines[0].split() == ["strategy", "answer_length", "nfe", "tokens_per_nfe",
                                "seconds", "speedup_vs_greedy", "accuracy", "note"]
    assert lines[3].split() == ["threshold+dual", "256", "40", "6.40", "2.25", "13.60",
                                "0.940", "x"]
    markup = table._repr_html_()
    assert markup.count("<tr>") == 3 and "<td>threshold+dual</td>" in markup
    assert re.search(r"<th>note</th>", markup)
    with pytest.raises(ValueError, match="at least one row"):
        viz.strategy_table([])


# ---------------------------------------------------------------------------------------
# visible glyphs for random byte-level pieces
# ---------------------------------------------------------------------------------------


def test_visible_text_shows_control_and_unprintable_characters():
    assert visible_text("a\x19b\x00c\x7f") == "a\u2303Yb\u2303@c\u2303?"
    assert visible_text("\ufffd") == "\ufffd"          # the replacement glyph itself
    assert visible_text("x\x85y\u200bz") == "x<U+0085>y<U+200B>z"
    assert visible_text("line\n\tend é 東") == "line\n\tend é 東"   # printable: unchanged
    with pytest.raises(TypeError, match="str"):
        visible_text(b"\x19")


def test_noise_chips_show_visible_glyphs():
    tok = FakeTokenizer()
    tok.pieces = {**tok.pieces, 30: "\x19", 31: " \x00\ufffd"}
    start = [30, 31, 30, 31, 30, 31, 30, 31]
    steps = []
    tokens = list(start)
    for i, pos in enumerate(ORDER):
        tokens = list(tokens)
        tokens[pos] = FINAL[pos]
        steps.append(Step(step=i + 1, tokens=tokens, changed=[pos], nfe=i + 1))
    player = viz.DemaskPlayer(steps, tok, initial_tokens=start)
    chips = Chips(player.frame_html(0))
    assert chips.status == ["noise"] * 8
    assert chips.text == "\u2303Y \u2303@\ufffd" * 4
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f]", player.frame_html(0) + player.to_html())
    assert player.frames()[0] == "\u2303Y \u2303@\ufffd" * 4
    assert viz.frame_text(steps, 0, tok, start) == player.frames()[0]


# ---------------------------------------------------------------------------------------
# kernel-free views: the HTML + JS animation and the filmstrip
# ---------------------------------------------------------------------------------------


class AnimationParts(HTMLParser):
    """The animation's pieces, read independently of viz: ids, scripts, images, the
    JSON frames."""

    def __init__(self, markup: str):
        super().__init__(convert_charrefs=True)
        self.ids, self.images, self.scripts, self.buttons = [], [], [], []
        self.slider = {}
        self._script = None
        self.feed(markup)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.append(attrs["id"])
        if tag == "img":
            self.images.append(attrs)
        if tag == "input" and "dllm-slider" in (attrs.get("class") or ""):
            self.slider = attrs
        if tag == "button":
            self.buttons.append(attrs.get("class"))
        if tag == "script":
            self._script = [attrs.get("type"), attrs.get("class"), ""]
            self.scripts.append(self._script)

    def handle_endtag(self, tag):
        if tag == "script":
            self._script = None

    def handle_data(self, data):
        if self._script is not None:
            self._script[2] += data

    def data(self):
        import json

        (payload,) = [body for kind, cls, body in self.scripts if kind == "application/json"]
        return json.loads(payload)


def test_animation_html_holds_every_frame_and_plays_without_a_kernel():
    tok = FakeTokenizer()
    steps = greedy_steps()
    steps[5].remasked = [1]        # a re-masked and a corrected chip must keep their colours
    steps[5].tokens = list(steps[5].tokens)
    steps[5].tokens[1] = MASK
    steps[6].corrected = [0]
    player = viz.DemaskPlayer(steps, tok, title="greedy <demo>", speed=4)
    markup = player.to_html()
    parts = AnimationParts(markup)
    data = parts.data()
    assert len(data["frames"]) == 9 and len(data["captions"]) == 9
    assert data["interval"] == 250
    for k, frame in enumerate(data["frames"]):   # each frame = the widget's frame k
        chips = [data["chips"][i] for i in frame]
        widget = Chips(player.frame_html(k))
        assert [data["statuses"][c[1]] for c in chips] == widget.status, k
        assert "".join(c[0] for c in chips) == widget.text, k
        assert data["captions"][k] in player.caption_text(k)
    # the colours of new / re-masked / corrected chips are the widget's: inline in the
    # static frame, in the data the script paints with, and in the CSS classes
    for status in ("new", "remasked", "corrected", "mask", "done"):
        bg = viz.STATUS_COLOURS[status][0]
        style = data["styles"][data["statuses"].index(status)]
        assert f"background: {bg}" in style and f".dllm-{status} {{background: {bg}" in markup
        assert any(data["statuses"][c[1]] == status for c in data["chips"])
    assert f'class="dllm-tok dllm-new" style="{data["styles"][1]}"' in markup
    # the flags: [SEP] is dimmed as special, the newline chip is followed by a line break
    assert {c[2] for c in data["chips"] if c[0] == "[SEP]"} == {1}
    assert {c[2] for c in data["chips"] if c[0] == "\u21b5"} == {2}
    # opens on the answer; the static markup shows it before any script runs
    assert Chips(markup).attrs == {"step": "8", "n": "8",
                                   "final": Chips(player.frame_html(8)).attrs["final"]}
    assert parts.slider["max"] == "8" and parts.slider["value"] == "8"
    assert {"dllm-play", "dllm-prev", "dllm-next"} <= set(parts.buttons)
    # self-contained: no external script, stylesheet or font; one still image inline
    assert not re.search(r"(src|href)=\"(?!data:)", markup)
    assert "http" not in markup
    assert [i["src"][:22] for i in parts.images] == ["data:image/png;base64,"]
    # deterministic ids (nbval compares text/html): derived from the content
    (anim_id,) = parts.ids
    assert re.fullmatch(r"dllm-anim-[0-9a-f]{12}", anim_id)
    again = viz.DemaskPlayer(steps, FakeTokenizer(), title="greedy <demo>", speed=4)
    assert again.to_html() == markup
    other = viz.DemaskPlayer(greedy_steps(), FakeTokenizer(), title="greedy <demo>")
    assert AnimationParts(other.to_html()).ids != [anim_id]
    assert "<demo>" not in markup and "greedy &lt;demo&gt;" in markup


def test_animation_escapes_script_closing_text():
    tok = FakeTokenizer()
    tok.pieces = {**tok.pieces, 15: " </script><b>x"}
    player = viz.DemaskPlayer(greedy_steps(), tok)
    markup = player.to_html(filmstrip=False)
    parts = AnimationParts(markup)
    assert [s[:2] for s in parts.scripts] == [["application/json", "dllm-data"], [None, None]]
    assert "</script><b>x" not in markup and "<\\/script><b>x" in markup   # inside the JSON
    assert {" </script><b>x"} == {c[0] for c in parts.data()["chips"] if "script" in c[0]}
    assert "&lt;/script&gt;&lt;b&gt;x" in markup            # the static frame, escaped
    assert not parts.images


def test_mime_bundle_has_widget_and_kernel_free_html():
    player = viz.DemaskPlayer(greedy_steps(), FakeTokenizer(), title="greedy")
    bundle = player._repr_mimebundle_()
    assert bundle["application/vnd.jupyter.widget-view+json"]["model_id"] == player.model_id
    assert bundle["text/html"] == player.to_html()
    assert bundle["text/plain"] == (
        "DemaskPlayer 'greedy': 8 steps, final 'The capital of France is Paris\\n[SEP]'")
    player.answer = "The capital of France is Paris"      # what animate_decoding sets
    assert player._repr_mimebundle_()["text/plain"].endswith(
        "8 steps, answer 'The capital of France is Paris'")


def test_filmstrip_draws_key_frames_in_the_player_colours():
    steps = greedy_steps()
    player = viz.DemaskPlayer(steps, FakeTokenizer(), title="greedy")
    assert player.key_frames() == [0, 3, 5, 8]
    assert player.key_frames(2) == [0, 8]
    with pytest.raises(ValueError, match="count"):
        player.key_frames(1)
    fig = player.filmstrip()
    assert isinstance(fig, Figure)
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert ["step 0", "step 3", "step 5", "step 8"] == [t for t in texts if t.startswith("step")]
    assert texts.count("[MASK]") == 8 + 5 + 3
    faces = {t.get_text(): t.get_bbox_patch().get_facecolor()
             for t in fig.axes[0].texts if t.get_bbox_patch() is not None}
    assert matplotlib.colors.to_hex(faces["new this step"]) == viz.STATUS_COLOURS["new"][0]
    png = player.filmstrip_png()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png == player.filmstrip_png()
    assert len(png) < 20_000      # a palette image: small enough to store in the notebook
    with pytest.raises(ValueError, match="step k"):
        player.filmstrip([0, 9])


def test_nbval_compares_the_frames_not_the_png():
    """tests/sanitize.cfg blanks the filmstrip's PNG bytes (font rendering differs between
    machines) but keeps the animation's frames, which nbval still compares."""
    from pathlib import Path

    from nbval.plugin import get_sanitize_patterns

    cfg = (Path(__file__).parent / "sanitize.cfg").read_text("utf-8")

    def sanitize(text):
        for regex, replace in get_sanitize_patterns(cfg):
            text = re.sub(regex, replace, text)
        return text

    player = viz.DemaskPlayer(greedy_steps(), FakeTokenizer())
    markup = player.to_html()
    other_png = re.sub(r"base64,[A-Za-z0-9+/=]+", "base64,iVBORw0KGgo0x1fAAAA+/=", markup)
    assert other_png != markup and sanitize(other_png) == sanitize(markup)
    other_final = viz.DemaskPlayer(greedy_steps(final=[10, 11, 12, 13, 14, 20, 16, 3]),
                                   FakeTokenizer()).to_html()
    assert sanitize(other_final) != sanitize(markup)
