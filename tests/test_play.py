"""`wm play`: the page, the WebSocket protocol and a real browser (Debian's chromium driven by
selenium) on debug-preset checkpoints, with the real game beside the world model."""

import asyncio
import json
import os
import struct
import threading
import time

import pytest

from conftest import init_tokenizer_and_latents, make_cfg, save_init_model
from wm.models.agent import Agent
from wm.models.dynamics import Dynamics
from wm.play import session_factory
from wm.play.server import parse_message, serve
from wm.play.session import action_for

ACTION_MAP = [[], ["UP"], ["DOWN"], ["LEFT"], ["RIGHT"], ["B"], ["UP", "B"], ["DOWN", "B"], ["LEFT", "B"], ["RIGHT", "B"]]


def test_held_buttons_map_to_the_action_map():
    assert action_for([], ACTION_MAP) == 0
    assert action_for(["LEFT"], ACTION_MAP) == 3
    assert action_for(["B", "LEFT"], ACTION_MAP) == 8  # order of pressing does not matter when the pair exists
    assert action_for(["UP", "LEFT"], ACTION_MAP) == 3  # no diagonal: the earlier press is let go
    assert action_for(["UP", "LEFT", "B"], ACTION_MAP) == 8


def test_malformed_messages_are_refused_with_a_reason():
    known = {"UP", "DOWN", "LEFT", "RIGHT", "B"}
    assert parse_message('{"type": "keys", "buttons": ["LEFT"], "seq": 3}', known)["seq"] == 3
    for bad, why in [("not json", "not JSON"), ("[1, 2]", "type"), ('{"type": "keys", "buttons": "LEFT"}', "list"),
                     ('{"type": "keys", "buttons": ["START"]}', "unknown buttons"), ('{"type": "dance"}', "unknown"),
                     ('{"type": "agent", "on": "yes"}', "true or false"),
                     ('{"type": "restart", "from": "moon"}', "game")]:
        with pytest.raises(ValueError, match=why):
            parse_message(bad, known)


@pytest.fixture(scope="module")
def play_server(debug_data, debug_raw, tmp_path_factory):
    """Debug-preset tokenizer + agent checkpoints, latents for 'a real moment', a server on a free port."""
    base = tmp_path_factory.mktemp("play")
    cfg = make_cfg(debug_raw, f"latents.in_dir={debug_data['cfg'].shard.out_dir}", f"latents.out_dir={base / 'latents'}",
                   f"tokenizer.out_dir={base / 'tok'}", f"agent.out_dir={base / 'agent'}", f"rl.out_dir={base / 'pmpo'}")
    init_tokenizer_and_latents(base, cfg)
    dyn = Dynamics(cfg.dynamics, len(cfg.env.action_map), cfg.tokenizer.n_latents, cfg.tokenizer.latent_dim)
    save_init_model(base / "agent", Agent(dyn, n_tasks=1, mtp=cfg.agent.mtp, bins=cfg.agent.bins), cfg)
    make = session_factory(cfg, base / "agent", base / "tok", threads=1)
    bound, ready = [], threading.Event()
    threading.Thread(target=serve, args=(make, "127.0.0.1", 0, 30.0, lambda p: (bound.append(p), ready.set())),
                     daemon=True).start()
    assert ready.wait(60), "the play server did not start"
    return f"127.0.0.1:{bound[0]}"


def _frame_header(data: bytes) -> dict:
    n = struct.unpack(">I", data[:4])[0]
    return json.loads(data[4 : 4 + n])


def test_protocol_errors_busy_and_disconnect(play_server):
    import aiohttp

    async def main():
        async with aiohttp.ClientSession() as http:
            ws = await http.ws_connect(f"http://{play_server}/ws")
            hello = await ws.receive_json(timeout=60)
            assert hello["type"] == "hello" and hello["game"] and hello["moments"]
            first = _frame_header((await ws.receive(timeout=60)).data)
            assert first["restarted"] == "game" and first["real"]
            # a malformed message gets an error reply and frames keep coming
            await ws.send_str("{oops")
            errors, frames = [], 0
            while not errors or frames < 3:
                msg = await ws.receive(timeout=60)
                if msg.type == aiohttp.WSMsgType.TEXT:
                    errors.append(json.loads(msg.data))
                else:
                    frames += 1
            assert errors[0]["type"] == "error" and "not JSON" in errors[0]["message"]
            # while it plays, a second client is told it is busy, and so is the page
            other = await http.ws_connect(f"http://{play_server}/ws")
            assert (await other.receive_json(timeout=30))["type"] == "busy"
            await other.close()
            async with http.get(f"http://{play_server}/") as page:
                assert page.status == 503 and "Someone is playing" in await page.text()
            await ws.close()
            # the disconnect freed the session: the next client plays
            for _ in range(100):
                async with http.get(f"http://{play_server}/") as page:
                    if page.status == 200:
                        break
                await asyncio.sleep(0.1)
            assert page.status == 200
            ws = await http.ws_connect(f"http://{play_server}/ws")
            assert (await ws.receive_json(timeout=60))["type"] == "hello"
            await ws.send_json({"type": "restart", "from": "moment", "seed": 1})
            while True:
                msg = await ws.receive(timeout=60)
                if msg.type == aiohttp.WSMsgType.BINARY and _frame_header(msg.data)["restarted"] == "moment":
                    break
            assert not _frame_header(msg.data)["real"]
            await ws.close()

    asyncio.run(main())


class _SlowSession:
    """A stand-in session whose steps take a while and which records whether close ever overlaps one."""

    action_map = ACTION_MAP
    env = None

    def __init__(self, log):
        self.log, self.stepping = log, False

    def describe(self):
        return {"game": "", "moments": 1}

    def _frame(self, restarted=""):
        import numpy as np

        from wm.play.session import Frame

        return Frame(np.zeros((8, 8, 3), np.uint8), None, 0, None, None, None, 0, 0.0, restarted)

    def restart_moment(self, index, seed):
        return self._frame("moment")

    def step(self, action):
        self.stepping = True
        self.log.append("step")
        time.sleep(0.5)
        self.stepping = False
        return self._frame()

    def close(self):
        self.log.append("close while stepping" if self.stepping else "close")


def test_a_client_leaving_mid_step_closes_the_session_after_the_step():
    import aiohttp

    log, bound, ready = [], [], threading.Event()
    threading.Thread(target=serve, args=(lambda: _SlowSession(log), "127.0.0.1", 0, 0.0,
                                         lambda p: (bound.append(p), ready.set())), daemon=True).start()
    assert ready.wait(60), "the play server did not start"

    async def main():
        async with aiohttp.ClientSession() as http:
            ws = await http.ws_connect(f"http://127.0.0.1:{bound[0]}/ws")
            assert (await ws.receive_json(timeout=30))["type"] == "hello"
            while "step" not in log:
                await asyncio.sleep(0.01)
            await ws.close()  # mid-step: the handler cancels the frame loop while the thread still steps
            for _ in range(100):
                if any(e.startswith("close") for e in log):
                    break
                await asyncio.sleep(0.05)

    asyncio.run(main())
    assert [e for e in log if e.startswith("close")] == ["close"], log


def _browser_or_skip():
    from wm.play.browser import find_browser

    if find_browser() is None:
        if os.environ.get("WM_REQUIRE_BROWSER"):
            pytest.fail("WM_REQUIRE_BROWSER is set but chromium/chromedriver are missing (apt-get install chromium "
                        "chromium-driver)")
        pytest.skip("no chromium + chromedriver (apt-get install chromium chromium-driver; `make test` does it as root)")


def test_browser_plays_the_world_model(play_server, tmp_path):
    _browser_or_skip()
    from selenium.webdriver.common.keys import Keys

    from wm.play.browser import open_browser, press, wait_for

    driver = open_browser()
    try:
        for _ in range(100):  # the previous test's session may still be closing
            driver.get(f"http://{play_server}/")
            if "busy" not in driver.title:
                break
            time.sleep(0.2)
        assert "busy" not in driver.title, "the previous session never freed the server"
        wait_for(driver, "window.wmStats && window.wmStats.frames > 3")
        press(driver, Keys.ARROW_LEFT, hold_s=0.2)
        press(driver, Keys.SPACE)
        wait_for(driver, "window.wmStats.latencies.length > 0")  # a key press reached a frame

        def play(keys):
            """Same start (game seed 0), one frame per key press; the last imagined frame's fingerprint."""
            driver.execute_script("window.wmPlay.setStepMode(true)")
            wait_for(driver, "window.wmStats.header && window.wmStats.header.run === false")
            n = driver.execute_script("return window.wmStats.frames")
            driver.execute_script("window.wmPlay.restart('game', 0)")
            wait_for(driver, f"window.wmStats.frames > {n} && window.wmStats.header.restarted === 'game'")
            for i, key in enumerate(keys):
                press(driver, key)
                wait_for(driver, f"window.wmStats.header.t === {i + 1}")
            return driver.execute_script("return window.wmStats.imaginedHash")

        left = play([Keys.ARROW_LEFT] * 4)
        right = play([Keys.ARROW_RIGHT] * 4)
        again = play([Keys.ARROW_LEFT] * 4)
        assert left != right, "different key sequences from the same start gave the same frame"
        assert left == again, "the same keys from the same start gave different frames"
        stats = driver.execute_script("return window.wmStats")
        assert stats["errors"] == [] and stats["header"]["real"] and stats["header"]["psnr"] is not None
        shot = tmp_path / "play.png"
        driver.save_screenshot(str(shot))
        assert shot.stat().st_size > 1000
        print(f"screenshot: {shot}")
    finally:
        driver.quit()
