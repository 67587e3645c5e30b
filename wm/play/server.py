"""`wm play`: the world model in a browser page, frame by frame, over a WebSocket.

One aiohttp app on 127.0.0.1 (``--host`` to widen): ``GET /`` is the page (``page.html``),
``GET /ws`` the stream. One person plays at a time: while a session is live, ``/`` answers with
a "busy" page (503) and a second WebSocket gets a ``busy`` message and is closed. A client that
disconnects frees its session (the real game is closed, the caches dropped).

Client -> server (JSON text):
  {"type": "keys", "buttons": ["LEFT", "B"], "seq": 12}   buttons held now, in press order
  {"type": "step", "buttons": [...], "seq": 13}           step mode: exactly one frame with these
  {"type": "mode", "run": true|false}                     free-running or step mode
  {"type": "agent", "on": true|false}                     the policy head plays
  {"type": "restart", "from": "game"|"moment", "seed": 0}
Anything else gets {"type": "error", "message": ...} and is dropped; the session goes on.

Server -> client: a text ``hello`` (action map, frame size, what is available), then one binary
message per frame: 4-byte big-endian header length, the JSON header (t, action, reward,
continuation, psnr, seq of the last input applied, ...), the imagined frame's RGB bytes and,
side by side, the real frame's.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from wm.errors import UserError
from wm.play.session import KEY_BUTTONS, Frame, PlaySession, action_for

BUSY_PAGE = ("<!doctype html><title>wm play: busy</title><body style='font-family:sans-serif'>"
             "<h1>Someone is playing</h1><p>This <code>wm play</code> server runs one session at a time. "
             "Close the other tab (or start another server with <code>--port</code>) and reload.</p></body>")


@dataclass
class Control:
    """What the client asked for, read by the frame loop between frames."""

    buttons: list[str] = field(default_factory=list)
    seq: int = 0
    run: bool = True
    agent: bool = False
    restart: tuple[str, int] | None = None
    steps: list[tuple[list[str], int]] = field(default_factory=list)  # step mode: one frame each
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    work: asyncio.Future | None = None  # the session call running in a thread, if any (see ``PlayServer._call``)


def encode_frame(frame: Frame, header: dict[str, Any]) -> bytes:
    head = json.dumps(header).encode()
    real = frame.real.tobytes() if frame.real is not None else b""
    return struct.pack(">I", len(head)) + head + frame.imagined.tobytes() + real


def parse_message(text: str, buttons_known: set[str]) -> dict[str, Any]:
    """Validate one client message; ValueError with a readable reason otherwise."""
    try:
        msg = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"not JSON: {err.msg}") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        raise ValueError('expected an object with a "type"')
    kind = msg["type"]
    if kind in ("keys", "step"):
        buttons = msg.get("buttons", [])
        if not isinstance(buttons, list) or not all(isinstance(b, str) for b in buttons):
            raise ValueError('"buttons" must be a list of button names')
        unknown = [b for b in buttons if b not in buttons_known]
        if unknown:
            raise ValueError(f"unknown buttons {unknown}; this game has {sorted(buttons_known)}")
        seq = msg.get("seq", 0)
        if not isinstance(seq, int):
            raise ValueError('"seq" must be an integer')
        return {"type": kind, "buttons": buttons, "seq": seq}
    if kind in ("mode", "agent"):
        key = "run" if kind == "mode" else "on"
        if not isinstance(msg.get(key), bool):
            raise ValueError(f'"{key}" must be true or false')
        return {"type": kind, key: msg[key]}
    if kind == "restart":
        where, seed = msg.get("from", "game"), msg.get("seed", 0)
        if where not in ("game", "moment") or not isinstance(seed, int):
            raise ValueError('restart needs "from": "game" or "moment" and an integer "seed"')
        return {"type": kind, "from": where, "seed": seed}
    raise ValueError(f"unknown message type {kind!r}")


class PlayServer:
    def __init__(self, make_session: Callable[[], PlaySession], *, fps: float = 15.0):
        self.make_session = make_session
        self.fps = fps  # 0 = as fast as the model goes
        self.active: Any = None

    def app(self):
        from aiohttp import web

        app = web.Application()
        app.router.add_get("/", self.index)
        app.router.add_get("/ws", self.websocket)
        return app

    async def index(self, request):
        from aiohttp import web

        if self.active is not None:
            return web.Response(status=503, text=BUSY_PAGE, content_type="text/html")
        page = resources.files("wm.play").joinpath("page.html").read_text()
        return web.Response(text=page, content_type="text/html")

    async def websocket(self, request):
        from aiohttp import WSMsgType, web

        ws = web.WebSocketResponse(max_msg_size=1 << 16)
        await ws.prepare(request)
        if self.active is not None:
            await ws.send_json({"type": "busy", "message": "someone else is playing on this server; try again later"})
            await ws.close()
            return ws
        self.active = ws
        session = None
        loop_task = None
        try:
            session = await asyncio.to_thread(self.make_session)
            known = {b for a in session.action_map for b in a}
            control = Control()
            await ws.send_json({"type": "hello", **session.describe(), "keys": KEY_BUTTONS, "fps_cap": self.fps})
            first = "game" if session.env is not None else "moment"
            control.restart = (first, 0)
            loop_task = asyncio.create_task(self._frames(ws, session, control))
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    if msg.type == WSMsgType.BINARY:
                        await ws.send_json({"type": "error", "message": "binary messages are not understood; send JSON"})
                    continue
                try:
                    m = parse_message(msg.data, known)
                except ValueError as err:
                    await ws.send_json({"type": "error", "message": str(err)})
                    continue
                self._apply(m, control)
                if loop_task.done():
                    break
        finally:
            if loop_task is not None:
                loop_task.cancel()
                try:
                    await loop_task
                except (asyncio.CancelledError, Exception):
                    pass
                # cancelling the loop does not stop a step already running in its thread: let it
                # finish before the emulator and model are closed under it
                if control.work is not None:
                    await asyncio.wait([control.work])
            if session is not None:
                await asyncio.to_thread(session.close)
            self.active = None
        return ws

    @staticmethod
    async def _call(c: Control, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` in a thread, recorded in ``c.work`` so that the handler can wait for it
        before closing the session (the loop's cancellation leaves the thread running)."""
        c.work = asyncio.ensure_future(asyncio.to_thread(fn, *args))
        return await asyncio.shield(c.work)

    @staticmethod
    def _apply(m: dict[str, Any], c: Control) -> None:
        kind = m["type"]
        if kind == "keys":
            c.buttons, c.seq = m["buttons"], m["seq"]
        elif kind == "step":
            c.steps.append((m["buttons"], m["seq"]))
        elif kind == "mode":
            c.run = m["run"]
        elif kind == "agent":
            c.agent = m["on"]
        elif kind == "restart":
            c.restart = (m["from"], m["seed"])
        c.wake.set()

    async def _frames(self, ws, session: PlaySession, c: Control) -> None:
        """The one owner of ``session``: restarts and steps it, one frame at a time."""
        next_at = time.perf_counter()
        game_seed = 0
        while not ws.closed:
            frame, seq = None, c.seq
            if c.restart is not None:
                where, seed = c.restart
                c.restart = None
                try:
                    if where == "game":
                        game_seed = seed
                        frame = await self._call(c, session.restart_game, seed)
                    else:
                        frame = await self._call(c, session.restart_moment, seed, seed)
                except ValueError as err:  # e.g. no held-out latents: say so, keep the current game
                    try:
                        await ws.send_json({"type": "error", "message": str(err)})
                    except ConnectionResetError:
                        return
                    continue
            elif c.steps:
                buttons, seq = c.steps.pop(0)
                action = None if c.agent else action_for(buttons, session.action_map)
                frame = await self._call(c, session.step, action)
            elif c.run:
                if self.fps > 0:
                    delay = next_at - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    next_at = max(next_at + 1.0 / self.fps, time.perf_counter())
                seq = c.seq
                action = None if c.agent else action_for(c.buttons, session.action_map)
                frame = await self._call(c, session.step, action)
            else:
                c.wake.clear()
                await c.wake.wait()
                continue
            header = {"t": frame.t, "action": frame.action, "action_name": "+".join(session.action_map[frame.action]) or "NOOP",
                      "reward": frame.reward, "cont": frame.cont, "psnr": frame.psnr, "seq": seq,
                      "agent": c.agent, "run": c.run, "real": frame.real is not None, "restarted": frame.restarted,
                      "real_return": frame.real_return,
                      "shape": list(frame.imagined.shape)}
            try:
                await ws.send_bytes(encode_frame(frame, header))
            except ConnectionResetError:  # the client went away mid-frame: the handler cleans up
                return
            if frame.restarted == "game over":
                game_seed += 1
                c.restart = ("game", game_seed)


def serve(make_session: Callable[[], PlaySession], host: str = "127.0.0.1", port: int = 8765, fps: float = 15.0,
          ready: Callable[[int], None] | None = None) -> None:
    """Run the server until interrupted; ``ready(port)`` is called once it listens (port 0 = any)."""
    from aiohttp import web

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port} ({err.strerror}); pick another --port") from None

    async def main() -> None:
        runner = web.AppRunner(PlayServer(make_session, fps=fps).app())
        await runner.setup()
        await web.SockSite(runner, sock).start()
        if ready is not None:
            ready(sock.getsockname()[1])
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    asyncio.run(main())

