"""End to end in a real browser: headless Chromium (Playwright) drives the launched app.

Asserts what a user sees: the stage text while the analysis runs, the first results before the
end, a legible chord timeline for a 3-minute song, a playhead that moves with playback,
click-to-seek, segment playback in track time, blind labelling, and a 400 px layout without
overlaps. Set ``M2E_SCREENSHOT_DIR`` to keep the screenshots and the timings there.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import C_MAJOR_LOOP, synth_chord_loop

CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).resolve().parent.parent
RATE = 22_050

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium (apt-get install chromium)"),
]

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--autoplay-policy=no-user-gesture-required"]

# The visible chord labels of the timeline: text drawn inside the plot area, with its box in
# page pixels, its row (the bar's y) and its size on screen (font size times the bar's scale).
VISIBLE_LABELS_JS = """
() => {
  const gd = document.querySelector('#m2e-chord-plot .js-plotly-plot');
  const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis;
  const box = gd.getBoundingClientRect();
  const left = box.left + xa._offset, right = left + xa._length;
  const out = [];
  gd.querySelectorAll('.cartesianlayer .barlayer .trace').forEach((trace, number) => {
    const name = gd._fullData[number] ? gd._fullData[number].name : '';
    trace.querySelectorAll('text').forEach((text) => {
      const r = text.getBoundingClientRect();
      const style = getComputedStyle(text);
      if (style.visibility === 'hidden' || style.display === 'none') return;
      if (!text.textContent || r.width === 0 || r.right <= left || r.left >= right) return;
      const size = parseFloat(getComputedStyle(text).fontSize) * text.getScreenCTM().a;
      out.push({row: name, text: text.textContent, left: r.left, right: r.right, top: r.top,
                bottom: r.bottom, size: size});
    });
  });
  return out;
}
"""
PLAYHEAD_JS = """
(id) => {
  const mark = document.querySelector('#' + id + ' .m2e-playhead');
  return mark ? {display: mark.style.display, left: parseFloat(mark.style.left), time: mark.dataset.time} : null;
}
"""
TIME_TO_PIXEL_JS = """
([id, seconds]) => {
  const gd = document.querySelector('#' + id + ' .js-plotly-plot');
  const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis;
  const box = gd.getBoundingClientRect();
  return [box.left + xa._offset + xa.l2p(seconds), box.top + ya._offset + ya._length / 2];
}
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def modulating_song(seconds_per_chord: float = 1.0) -> np.ndarray:
    """Three minutes of I-V-vi-IV in four keys (C, D, F, A major), 45 s each: 180 chords."""
    sections = []
    for shift in (0, 2, 5, 9):
        loop = [[note + shift for note in chord] for chord in C_MAJOR_LOOP]
        repeats = int(round(45 / (seconds_per_chord * len(loop))))
        sections.append(synth_chord_loop(loop, repeats=repeats, seconds_per_chord=seconds_per_chord))
    return np.concatenate(sections)


@pytest.fixture(scope="module")
def app_url(tiny_models, chord_backend, tmp_path_factory):
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from app import build_demo, style
    from m2e_core.labels import LabelStore
    from m2e_core.pipeline import Analyzer

    encoder_dir, heads = tiny_models

    def factory(*, emotion: bool = True) -> Analyzer:
        return Analyzer(encoder=encoder_dir, checkpoint=heads, chords=chord_backend, emotion=emotion,
                        device="cpu", top_k=5, allow_download=False)

    root = tmp_path_factory.mktemp("browser-app")
    demo = build_demo(factory, label_store=LabelStore(root / "labels"), temp_root=root / "tmp")
    demo.explorer.shared.get()  # models load before the timed analyses
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, ssr_mode=False, quiet=True,
                **style())
    yield f"http://127.0.0.1:{port}/", root / "labels"
    demo.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def _keep(path: Path) -> None:
    target = os.environ.get("M2E_SCREENSHOT_DIR")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, Path(target) / path.name)


def _overlaps(a: dict, b: dict, slack: float = 0.5) -> bool:
    return (a["left"] < b["right"] - slack and b["left"] < a["right"] - slack
            and a["top"] < b["bottom"] - slack and b["top"] < a["bottom"] - slack)


def _upload(page, track: Path) -> None:
    page.locator("#m2e-audio input[type=file]").set_input_files(str(track))
    page.wait_for_selector("#m2e-audio [data-testid=waveform-controls]", timeout=60_000)


def test_three_minute_song_streams_and_its_timeline_is_legible_and_synced(app_url, browser, tmp_path):
    from playwright.sync_api import expect

    url, _ = app_url
    track = tmp_path / "four_keys.wav"
    sf.write(track, modulating_song(), RATE)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(url)
    started = time.monotonic()
    _upload(page, track)
    uploaded = time.monotonic()
    page.click("#m2e-analyze")

    # While it runs: the stage text names the stage and the segment; results arrive before the end.
    stages: list[str] = []
    first_result = None
    while time.monotonic() - uploaded < 600:
        stage = page.locator("#m2e-stage").inner_text()
        stages.append(" ".join(stage.split()))
        if first_result is None and page.locator("#m2e-chord-plot .barlayer .point").count():
            first_result = time.monotonic()
            first_stage = stages[-1]
            first_summary = page.locator("#m2e-summary").inner_text()
        if "Analysed in" in stage:
            break
        time.sleep(0.1)
    finished = time.monotonic()
    assert "Analysed in" in stages[-1], stages[-5:]
    assert any("of 6" in text and "segment" in text for text in stages), sorted(set(stages))[:20]
    assert first_result is not None and first_result < finished - 1.0
    assert "Analysed in" not in first_stage and "four_keys.wav" in first_summary

    page.locator("#m2e-chord-plot").scroll_into_view_if_needed()
    page.screenshot(path=str(tmp_path / "timeline-1400.png"), full_page=False,
                    clip=page.locator("#m2e-chord-plot").bounding_box())
    _keep(tmp_path / "timeline-1400.png")

    # Every chord label drawn is >= 9 px on screen and no two labels of a row overlap.
    labels = page.evaluate(VISIBLE_LABELS_JS)
    chords = [label for label in labels if label["row"] == "chords"]
    assert len(chords) >= 15, chords  # the default window shows 30 s: a label per one-second chord
    assert min(label["size"] for label in labels) >= 9.0
    for row in {label["row"] for label in labels}:
        boxes = [label for label in labels if label["row"] == row]
        clashes = [(a["text"], b["text"]) for i, a in enumerate(boxes) for b in boxes[i + 1:] if _overlaps(a, b)]
        assert not clashes, (row, clashes[:5])
    assert {"C", "G", "Am", "F"} <= {label["text"] for label in chords}
    keys = [label["text"] for label in labels if label["row"] == "key"]
    assert keys and keys[0].startswith("C")

    # The playhead follows playback on the timeline and on the emotion chart.
    page.evaluate("document.querySelector('#m2e-player audio').play()")
    page.wait_for_function("document.querySelector('#m2e-player audio').currentTime > 0.5", timeout=20_000)
    before = page.evaluate(PLAYHEAD_JS, "m2e-chord-plot")
    page.wait_for_timeout(1200)
    after = page.evaluate(PLAYHEAD_JS, "m2e-chord-plot")
    assert before["display"] == after["display"] == "block"
    assert float(after["time"]) > float(before["time"]) + 0.5 and after["left"] > before["left"]
    assert page.evaluate(PLAYHEAD_JS, "m2e-emotion-plot")["display"] == "block"

    # A click on the timeline plays from that time.
    page.locator("#m2e-chord-plot").scroll_into_view_if_needed()
    x, y = page.evaluate(TIME_TO_PIXEL_JS, ["m2e-chord-plot", 20.0])
    page.mouse.click(x, y)
    page.wait_for_timeout(300)
    now = page.evaluate("document.querySelector('#m2e-player audio').currentTime")
    assert 19.5 <= now <= 21.5, now
    page.locator("#m2e-emotion-plot").scroll_into_view_if_needed()
    x, y = page.evaluate(TIME_TO_PIXEL_JS, ["m2e-emotion-plot", 100.0])
    page.mouse.click(x, y)
    page.wait_for_timeout(300)
    assert 99.5 <= page.evaluate("document.querySelector('#m2e-player audio').currentTime") <= 101.5

    # Choosing segment 3 plays it in track time (from 1:00).
    page.click("#m2e-segment input")
    page.get_by_role("option", name="segment 3").click()
    expect(page.locator("#m2e-segment-md")).to_contain_text("Segment 3 (1:00-1:30)", timeout=60_000)
    page.wait_for_function("Math.abs(document.querySelector('#m2e-player audio').currentTime - 60.3) < 1.5",
                           timeout=20_000)
    page.evaluate("document.querySelector('#m2e-player audio').pause()")
    page.screenshot(path=str(tmp_path / "analyze-1400.png"), full_page=True)
    _keep(tmp_path / "analyze-1400.png")
    timings = {"track_seconds": 180, "upload_s": round(uploaded - started, 2),
               "upload_to_first_result_s": round(first_result - started, 2),
               "upload_to_all_results_s": round(finished - started, 2),
               "click_to_first_result_s": round(first_result - uploaded, 2),
               "click_to_all_results_s": round(finished - uploaded, 2)}
    print("timings", json.dumps(timings))
    (tmp_path / "timings.json").write_text(json.dumps(timings, indent=2) + "\n")
    _keep(tmp_path / "timings.json")
    page.close()


def test_blind_labelling_in_the_browser(app_url, browser, tmp_path):
    from playwright.sync_api import expect

    url, labels_dir = app_url
    track = tmp_path / "c_major_loop.wav"
    sf.write(track, synth_chord_loop(C_MAJOR_LOOP, repeats=5), RATE)  # 40 s: two segments
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(url)
    _upload(page, track)
    page.click("#m2e-analyze")
    expect(page.locator("#m2e-stage")).to_contain_text("Analysed in", timeout=300_000)
    page.click("#m2e-segment input")
    page.get_by_role("option", name="segment 2").click()
    expect(page.locator("#m2e-segment-md")).to_contain_text("Segment 2 (0:30-0:40)", timeout=60_000)
    page.get_by_text("Label the selection").click()
    assert page.get_by_label("valence (negative → positive)", exact=False).first.input_value() == "5"
    assert page.locator("#m2e-label input[type=checkbox]:checked").count() == 2  # blind and include V/A only
    page.locator("#m2e-annotator textarea, #m2e-annotator input").first.fill("ann")
    page.get_by_label("dark", exact=True).check()
    page.get_by_role("button", name="Save label").click()
    expect(page.get_by_text("Saved label for segment 2 of c_major_loop.wav by ann")).to_be_visible(timeout=60_000)

    # A refused file: one line that says why, and the error mark on the stage line only, not on the plots.
    crafted = tmp_path / "crafted.json"
    crafted.write_text(json.dumps({"duration": 1_000_000, "segments": []}))
    page.get_by_text("Open a saved analysis").click()
    page.locator("#m2e-json-in input[type=file]").set_input_files(str(crafted))
    page.get_by_role("button", name="Open analysis").click()
    toast = page.locator(".toast-message-text").first
    expect(toast).to_contain_text("crafted.json: the analysis is of a 16666:40 track", timeout=30_000)
    assert "\n" not in toast.inner_text().strip() and "/" not in toast.inner_text()
    marked = page.evaluate("[...document.querySelectorAll('.error')].filter(e => !e.closest('.toast-wrap, "
                           "[class*=toast]')).map(e => e.closest('[id]') ? e.closest('[id]').id : '')")
    assert set(marked) <= {"m2e-stage"}, marked
    page.close()
    from m2e_core.labels import LabelStore

    records = LabelStore(labels_dir).records()
    assert [(r.segment, r.start, r.end, r.annotator, "dark" in r.tags) for r in records] == [
        (1, 30.0, 40.0, "ann", True)]


def test_phone_width_layout_has_no_overlaps(app_url, browser, tmp_path):
    from playwright.sync_api import expect

    url, _ = app_url
    track = tmp_path / "phone.wav"
    sf.write(track, synth_chord_loop(C_MAJOR_LOOP, repeats=5), RATE)
    page = browser.new_page(viewport={"width": 400, "height": 900})
    page.goto(url)
    _upload(page, track)
    page.click("#m2e-analyze")
    expect(page.locator("#m2e-stage")).to_contain_text("Analysed in", timeout=300_000)
    page.wait_for_selector("#m2e-tag-plot .js-plotly-plot .barlayer .point", timeout=60_000)
    page.wait_for_timeout(500)
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 401, f"the page scrolls sideways: {width} px"
    boxes = {}
    for name in ("m2e-chord-plot", "m2e-emotion-plot", "m2e-va-plot", "m2e-tag-plot"):
        box = page.locator(f"#{name} .js-plotly-plot").bounding_box()
        assert box is not None and box["x"] >= -0.5 and box["x"] + box["width"] <= 400.5, (name, box)
        boxes[name] = {"left": box["x"], "right": box["x"] + box["width"], "top": box["y"],
                       "bottom": box["y"] + box["height"]}
    names = list(boxes)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not _overlaps(boxes[a], boxes[b]), (a, b)
    # Inside each figure: the title, the legend and the axis titles do not overlap each other.
    inner = page.evaluate("""
      () => [...document.querySelectorAll('.js-plotly-plot')].map((gd) => {
        const pick = (selector) => [...gd.querySelectorAll(selector)].map((el) => {
          const r = el.getBoundingClientRect();
          return {left: r.left, right: r.right, top: r.top, bottom: r.bottom, what: selector};
        }).filter((r) => r.right > r.left);
        return [...pick('.g-gtitle'), ...pick('.legend'), ...pick('.g-xtitle'), ...pick('.g-ytitle'),
                ...pick('.modebar-container .modebar')];
      })
    """)
    for parts in inner:
        for i, a in enumerate(parts):
            for b in parts[i + 1:]:
                assert not _overlaps(a, b, slack=1.0), (a, b)
    labels = page.evaluate(VISIBLE_LABELS_JS)
    assert labels and min(label["size"] for label in labels) >= 9.0
    page.screenshot(path=str(tmp_path / "analyze-400.png"), full_page=True)
    _keep(tmp_path / "analyze-400.png")
    page.close()
