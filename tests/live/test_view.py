"""The --view page in a real headless Chromium: frames with the kept-patch overlay, a question typed there answered."""

from __future__ import annotations

import json
import shutil
import threading

import pytest

from tests.helpers import write_clip
from tests.live.test_watch import _config, _events, _wait_for

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason="needs Debian's chromium and chromium-driver (.ci/run)")
def test_page_shows_the_overlay_and_answers_a_typed_question(live_export, tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (the dev extra)")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from omnisift_edge.live.watch import watch

    clip = write_clip(tmp_path / "clip.mp4", seconds=40, w=112, h=84)
    events, urls, stop = tmp_path / "events.jsonl", [], threading.Event()
    cfg = _config(live_export, str(clip), events, realtime=True, view="127.0.0.1:0")
    thread = threading.Thread(target=watch, args=(cfg,), daemon=True,
                              kwargs={"stop": stop, "progress": lambda line: urls.extend(
                                  w for w in line.split() if w.startswith("http://"))})
    thread.start()
    assert _wait_for(lambda: urls, 60), "the view never started"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
                 "--disable-dev-shm-usage"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=CHROMEDRIVER), options=options)
    try:
        driver.get(urls[0])
        wait = WebDriverWait(driver, 60)
        canvas = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#frames canvas[data-chunk]"))
        index, kept, dimmed = (int(canvas.get_attribute(a)) for a in ("data-chunk", "data-kept", "data-dimmed"))
        chunk = next(e for e in _events(events) if e["event"] == "chunk" and e["index"] == index)
        per_frame = kept + dimmed
        assert per_frame == 12                                    # 4x3 merged tokens at 112x84
        assert kept == sum(1 for i in chunk["kept_video_index"] if i < per_frame)   # frame 0: grid step 0
        pixels = driver.execute_script(
            "const c = arguments[0]; return Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height)"
            ".data.filter((v, i) => i % 4 != 3)).reduce((a, b) => a + b, 0);", canvas)
        assert pixels > 0                                         # the frame was drawn, not a blank canvas
        box = driver.find_element(By.ID, "question")
        box.send_keys("What colour is the square?")
        driver.find_element(By.ID, "send").click()
        done = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, ".answer[data-done='1']"))
        assert done.get_attribute("data-question") == "What colour is the square?"
    finally:
        driver.quit()
        stop.set()
        thread.join(timeout=60)
    answers = [e for e in _events(events) if e["event"] == "answer"]
    assert [a["origin"] for a in answers] == ["view"] and answers[0]["tokens"] >= 1
    assert json.loads(events.read_text().splitlines()[-1])["reason"] == "stopped"
