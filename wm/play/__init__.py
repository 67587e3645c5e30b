"""`wm play`: play inside the world model in a browser (``server``), one session at a time
(``session``), measured in a real browser (``browser``).

``run`` is the command: it finds the checkpoints (the PMPO policy's world model by default, the
finetuned agent if imagination RL has not run; ``--rev`` fetches both at a git revision with
``dvc get``), loads the world model once and serves it, or with ``--measure`` plays it for a few
seconds in headless chromium and writes what the page measured to data/metrics/play.json.
"""

from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path
from typing import Any

from wm.config import Config
from wm.errors import UserError

PLAY_METRICS = "data/metrics/play.json"


def checkpoint_dirs(cfg: Config, agent_dir: str | None, rev: str | None) -> tuple[Path, Path]:
    """(agent dir, tokenizer dir): given, fetched at ``rev``, or the pipeline's."""
    from wm.training.trainer import CHECKPOINT
    from wm.world_model import agent_tokenizer_dir

    if rev:
        from wm.inspect import fetch_at

        base = Path(tempfile.mkdtemp(prefix=f"wm-play-{rev[:12]}-"))
        src = agent_dir or cfg.rl.out_dir
        fetch_at(".", src, rev, base / "agent")
        fetch_at(".", cfg.tokenizer.out_dir, rev, base / "tokenizer")
        return base / "agent", base / "tokenizer"
    if agent_dir is None:
        agent_dir = cfg.rl.out_dir if (Path(cfg.rl.out_dir) / CHECKPOINT).exists() else cfg.agent.out_dir
    agent = Path(agent_dir)
    if not (agent / CHECKPOINT).exists():
        raise UserError(f"no agent checkpoint in {agent}: run `dvc repro finetune_agent` (or `dvc pull`), "
                        "or point --agent at one")
    tok = agent_tokenizer_dir(agent, cfg.tokenizer.out_dir)
    if not (tok / CHECKPOINT).exists():
        raise UserError(f"no tokenizer checkpoint in {tok}: run `dvc repro train_tokenizer` (or `dvc pull`)")
    return agent, tok


def session_factory(cfg: Config, agent_dir: Path, tokenizer_dir: Path, *, game: bool = True, steps: int | None = None,
                    context: int | None = None, threads: int = 0):
    """Load the world model once; each call makes a fresh session around it."""
    import torch

    from wm.play.session import PlaySession
    from wm.training.distributed import compute_device
    from wm.world_model import WorldModel

    if threads > 0:
        torch.set_num_threads(threads)
    world, saved = WorldModel.load(agent_dir, tokenizer_dir, steps=steps, device=compute_device())
    action_map = saved["env"]["action_map"]
    if [list(a) for a in action_map] != [list(a) for a in cfg.env.action_map] and game:
        raise UserError(f"the checkpoint in {agent_dir} was trained with another action map than params.yaml's env; "
                        "play it with --no-game or the params it was trained with")
    ctx = context or cfg.rl.context
    latents = cfg.latents.out_dir

    def make() -> PlaySession:
        return PlaySession(world, cfg.env if game else None, action_map, context=ctx, latents_dir=latents)

    make.world = world  # type: ignore[attr-defined]
    return make


def run(cfg: Config, *, host: str = "127.0.0.1", port: int = 8765, fps: float = 15.0, agent_dir: str | None = None,
        rev: str | None = None, game: bool = True, steps: int | None = None, measure_s: float = 0.0,
        out: str = PLAY_METRICS, screenshot: str | None = None, threads: int = 1) -> dict[str, Any]:
    from wm.play.server import serve

    agent, tok = checkpoint_dirs(cfg, agent_dir, rev)
    make = session_factory(cfg, agent, tok, game=game, steps=steps, threads=threads)
    if measure_s <= 0:
        def ready(bound: int) -> None:
            print(f"wm play: open http://{host}:{bound}/  (world model {agent}, Ctrl-C to stop)", flush=True)

        serve(make, host, port, fps, ready)
        return {}
    return measure_play(make, agent, host=host, port=port, fps=fps, seconds=measure_s, out=out,
                        screenshot=screenshot)


def measure_play(make, agent: Path, *, host: str, port: int, fps: float, seconds: float, out: str,
                 screenshot: str | None = None) -> dict[str, Any]:
    """Serve in a thread, play ``seconds`` in headless chromium, write the page's figures."""
    import torch

    from wm.atomic import write_json_atomic
    from wm.play.browser import measure
    from wm.play.server import serve

    bound: list[int] = []
    listening = threading.Event()

    def ready(p: int) -> None:
        bound.append(p)
        listening.set()

    threading.Thread(target=serve, args=(make, host, port, fps, ready), daemon=True).start()
    if not listening.wait(120):
        raise UserError("the play server did not start within 120 s")
    figures = measure(f"http://{host}:{bound[0]}/", seconds, screenshot)
    figures.update({"fps_cap": fps, "sampler_steps": make.world.steps,
                    "checkpoint": str(agent), "cpu_threads": torch.get_num_threads(), "cores": os.cpu_count()})
    write_json_atomic(out, figures)
    return figures

