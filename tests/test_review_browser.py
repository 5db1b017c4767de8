"""The review page in a real headless Chromium (Debian's, driven by Playwright; nothing downloaded): sign in, confirm
one finding, reject another, draw a missed one, meet a conflicting edit, drag a box, and find exactly those
verdicts in the store. Set FRACFL_REVIEW_SCREENSHOTS=docs/img to refresh the screenshots in docs/review.md."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from review_support import PASSWORD, Site, make_site

from client.review.app import ReviewSettings, create_app

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed (/usr/bin/chromium)")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture
def served(tmp_path) -> Iterator[tuple[str, Site]]:
    site = make_site(tmp_path, size=512)
    app = create_app(site.store, site.accounts, ReviewSettings(advance_seconds=0.3))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            pytest.fail("uvicorn did not start")
        threading.Event().wait(0.05)
    yield f"http://127.0.0.1:{port}", site
    server.should_exit = True
    thread.join(timeout=10)


def test_review_in_chromium(served, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    base, site = served
    shots = Path(os.environ.get("FRACFL_REVIEW_SCREENSHOTS") or tmp_path)
    a_id, b_id, c_id = site.image_ids
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.set_default_timeout(10_000)
        page.goto(f"{base}/")
        expect(page).to_have_url(f"{base}/login")
        page.fill("input[name=username]", "ada")
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        expect(page.locator("#worklist tbody tr")).to_have_count(3)
        expect(page.locator("header")).to_contain_text("demo/v0007")
        page.screenshot(path=str(shots / "review-worklist.png"))

        page.keyboard.press("Enter")  # the most suspicious case first
        expect(page).to_have_url(f"{base}/case/{a_id}")
        expect(page.locator("#boxes li")).to_have_count(2)
        page.keyboard.press("h")
        expect(page.locator("#heatmap")).to_be_visible()
        page.screenshot(path=str(shots / "review-case.png"))
        page.keyboard.press("h")
        page.keyboard.press("c")  # the first box is selected on opening: confirm it with one key
        expect(page.locator("#message")).to_have_text("saved: confirm")
        page.locator("#boxes li").nth(1).locator("button.reject").click()  # and reject the other with one click
        expect(page).to_have_url(f"{base}/case/{b_id}")  # the next case opened by itself

        viewer = page.locator("#radiograph")
        expect(viewer).to_be_visible()
        page.wait_for_function("document.getElementById('radiograph').naturalWidth > 0")
        page.wait_for_function("document.querySelectorAll('#overlay rect.box').length === 1")
        frame = viewer.bounding_box()
        scale = frame["width"] / 512

        def at(x: float, y: float) -> tuple[float, float]:
            return frame["x"] + x * scale, frame["y"] + y * scale

        def drag(start: tuple[float, float], end: tuple[float, float]) -> None:
            page.mouse.move(*at(*start))
            page.mouse.down()
            page.mouse.move(*at((start[0] + end[0]) / 2, (start[1] + end[1]) / 2), steps=4)
            page.mouse.move(*at(*end), steps=4)
            page.mouse.up()

        page.keyboard.press("d")  # draw the fracture the model missed
        drag((300, 300), (380, 360))
        expect(page.locator("#message")).to_have_text("saved: add")
        expect(page.locator("#boxes li")).to_have_count(2)

        # meanwhile another reviewer confirms the model's box: the drag made on the old version is refused and shown
        b_box = site.store.image(b_id).boxes[0]
        site.store.add_verdict(image_id=b_id, reviewer="rev-other", kind="confirm", box_id=b_box.id)
        drag((95, 70), (115, 80))
        expect(page.locator("#message")).to_contain_text("someone else changed it")
        expect(page.locator("#boxes li").first).to_contain_text("confirmed")
        drag((95, 70), (115, 80))  # again, on the version now shown
        expect(page).to_have_url(f"{base}/case/{c_id}")
        browser.close()

    ada = site.accounts.user("ada").reviewer_id
    got = [(v.image_id, v.kind, v.reviewer) for v in site.store.verdicts()]
    assert got == [
        (a_id, "confirm", ada),
        (a_id, "reject", ada),
        (b_id, "add", ada),
        (b_id, "confirm", "rev-other"),
        (b_id, "move", ada),
    ]
    a_boxes = site.store.image(a_id).boxes
    assert [b.status for b in a_boxes] == ["confirmed", "rejected"]
    b_boxes = {b.origin: b for b in site.store.image(b_id).boxes}
    assert b_boxes["reviewer"].box.as_list() == pytest.approx([300, 300, 380, 360], abs=3)
    assert b_boxes["model"].box.as_list() == pytest.approx([80, 50, 150, 110], abs=3)  # moved by (20, 10)
    assert b_boxes["model"].status == "corrected" and b_boxes["model"].version == 3
    assert site.store.verdicts(c_id) == []
    assert (shots / "review-case.png").stat().st_size > 10_000
