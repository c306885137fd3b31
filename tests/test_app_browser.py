"""End to end in a real browser: headless Chromium (Playwright) drives the launched app.

Set ``M2E_SCREENSHOT_COPY=/some/path.png`` to keep a copy of the screenshot outside pytest's
temporary directory.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
from pathlib import Path

import pytest
import soundfile as sf
from conftest import C_MAJOR_LOOP, synth_chord_loop

CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).resolve().parent.parent

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium (apt-get install chromium)"),
]

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, ssr_mode=False, quiet=True,
                **style())
    yield f"http://127.0.0.1:{port}/", root / "labels"
    demo.close()


def test_upload_analyze_explore_and_label_in_the_browser(app_url, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    url, labels_dir = app_url
    track = tmp_path / "c_major_loop.wav"
    sf.write(track, synth_chord_loop(C_MAJOR_LOOP, repeats=5), 22_050)  # 40 s: two segments
    screenshot = tmp_path / "app.png"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url)
            page.locator("#m2e-audio input[type=file]").set_input_files(str(track))
            page.wait_for_selector("#m2e-audio [data-testid=waveform-controls]", timeout=60_000)
            page.click("#m2e-analyze")

            # The VA plane and the chord timeline are drawn by plotly in the page.
            page.wait_for_selector("#m2e-chord-plot .js-plotly-plot .barlayer .trace", timeout=180_000)
            page.wait_for_selector("#m2e-va-plot .js-plotly-plot .scatterlayer .trace", timeout=60_000)
            va_points = page.locator("#m2e-va-plot .scatterlayer .trace .points path")
            assert va_points.count() >= 56 + 2 + 1  # tag anchors, two segments, the track
            chord_bars = page.locator("#m2e-chord-plot .barlayer .point")
            assert chord_bars.count() >= 2 * 20  # two rows of at least 20 chords
            bar_texts = page.locator("#m2e-chord-plot .barlayer text").all_text_contents()
            assert {"C:maj", "G:maj", "A:min", "F:maj"} <= set(bar_texts)
            page.wait_for_selector("#m2e-tag-plot .js-plotly-plot .barlayer .point", timeout=60_000)
            expect(page.locator("#m2e-summary")).to_contain_text("C major")

            # Explore segment 2, then label it.
            page.click("#m2e-segment input")
            page.get_by_role("option", name="segment 2").click()
            expect(page.locator("#m2e-segment-md")).to_contain_text("Segment 2 (0:30-0:40)", timeout=60_000)
            page.get_by_text("Label the selection").click()
            page.get_by_label("dark", exact=True).check()
            page.get_by_role("button", name="Save label").click()
            expect(page.get_by_text("Saved label for segment 2 of c_major_loop.wav")).to_be_visible(timeout=60_000)
            page.locator("#m2e-va-plot").scroll_into_view_if_needed()
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    assert screenshot.stat().st_size > 50_000
    from m2e_core.labels import LabelStore

    records = LabelStore(labels_dir).records()
    assert [(r.segment, r.start, r.end, "dark" in r.tags) for r in records] == [(1, 30.0, 40.0, True)]
    copy_to = os.environ.get("M2E_SCREENSHOT_COPY")
    if copy_to:
        shutil.copyfile(screenshot, copy_to)
