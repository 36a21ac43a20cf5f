"""The playground page in a real browser: Debian's `chromium` driven by playwright (Python) through
`executable_path` (playwright's own browser download is never used).

Set GPTLAB_SCREENSHOTS=<folder> to keep a screenshot of each view (experiments/playground/ holds them).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import httpx
import pytest

from tests.test_serve import Server, tiny_checkpoint

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (`apt-get install -y chromium`; .ci/run does it)")
sync_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture
def server(tmp_path):
    s = Server(tiny_checkpoint(tmp_path / "tiny.ckpt"))
    yield s
    s.stop()


def test_playground_in_chromium(server, tmp_path):
    shots = Path(os.environ.get("GPTLAB_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    errors, foreign = [], []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 860})
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("request", lambda r: None if r.url.startswith(server.url) else foreign.append(r.url))
        page.goto(server.url)
        sync_api.expect(page.locator("#model-info")).to_contain_text("2 layers × 2 heads")

        # generate: type a prompt, pick top-k, wait for the stream
        page.fill("#prompt", "ROMEO:\n")
        page.select_option("#strategy", "top_k")
        assert page.is_visible("#top_k") and not page.is_visible("#num_beams")
        page.fill("#max_tokens", "40")
        page.click("#generate")
        sync_api.expect(page.locator("#status")).to_contain_text("done: 40 tokens", timeout=60_000)
        generated = page.locator("#output .tok.gen")
        assert generated.count() == 40 and page.locator("#output .tok.prompt").count() == 7
        assert all(generated.nth(i).evaluate("e => e.style.background !== ''") for i in range(40))

        # hover a generated token: its alternatives, and the bar chart of that position
        generated.nth(5).hover()
        tooltip = page.locator("#tooltip")
        sync_api.expect(tooltip).to_contain_text("alternatives")
        sync_api.expect(page.locator("#bars rect.bar")).to_have_count(12)
        assert page.locator("#bars rect.actual").count() == 1  # top-k 10 drew one of the 12 shown
        page.screenshot(path=str(shots / "generate.png"))

        # attention: a causal heatmap for all 47 tokens, re-drawn for another layer and head
        page.click("button[data-view=attention]")
        sync_api.expect(page.locator("#heatmap rect.cell")).to_have_count(47 * 47, timeout=30_000)
        page.select_option("#layer", "1")
        page.select_option("#head", "0")
        above = page.eval_on_selector_all(
            "#heatmap rect.cell", "rs => rs.filter((r, i) => i % 47 > Math.floor(i / 47))"
                                  ".every(r => r.getAttribute('fill') === 'hsl(220, 75%, 98%)')")
        assert above  # no token attends to a later one
        page.locator("#heatmap rect.cell").nth(47 * 10 + 3).hover()
        sync_api.expect(page.locator("#cell-info")).to_contain_text("(10) →")
        page.screenshot(path=str(shots / "attention.png"))

        # compare: every preset side by side; the greedy column equals the API's greedy completion
        page.click("button[data-view=compare]")
        page.fill("#max_tokens", "30")
        page.click("#compare")
        sync_api.expect(page.locator("#compare-out .column .meta")).to_have_text(
            [re.compile(r"30 tokens, mean log-prob -?\d")] * 6, timeout=60_000)
        greedy = httpx.post(server.url + "/v1/completions", timeout=60,
                            json={"prompt": "ROMEO:\n", "max_tokens": 30, "temperature": 0}).json()
        shown = page.locator("#compare-out .column").first.locator(".tokens").inner_text()
        assert shown.replace("⏎", "") == greedy["choices"][0]["text"]
        page.screenshot(path=str(shots / "compare.png"), full_page=True)
        browser.close()
    assert not errors, errors
    assert not foreign, f"the page fetched from outside the server: {foreign}"
