"""`wm <stage> [key=value ...]`: the command line DVC stages and people call.

Config comes from params.yaml (what DVC tracks), or from a preset composed on the fly with
``--preset``; ``key=value`` overrides apply on top (``wm collect collect.frames=2000``).
Errors a user can fix print one clear line and exit 2; nothing half-written is left.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from typing import Any

from wm import config as config_mod


def _load_cfg(args: argparse.Namespace) -> config_mod.Config:
    if args.preset:
        raw = config_mod.compose(args.preset)
        return config_mod.from_dict(config_mod.Config, config_mod.apply_overrides(raw, args.overrides))
    return config_mod.load(args.params, args.overrides)


def _stage(module: str, trains: bool) -> Callable[[argparse.Namespace], dict[str, Any]]:
    def run(args: argparse.Namespace) -> dict[str, Any]:
        import importlib

        cfg = _load_cfg(args)
        stage = importlib.import_module(f"wm.stages.{module}")
        cwd = os.getcwd()
        if args.workdir:  # the configured folders stay where they are; metrics, plots and logs go there
            cfg = config_mod.with_absolute_paths(cfg)
            os.makedirs(args.workdir, exist_ok=True)
            os.chdir(args.workdir)
        try:
            if trains:
                return stage.run(cfg, resume=args.resume)
            if getattr(args, "metrics", None):
                return stage.run(cfg, metrics_path=os.path.join(cwd, args.metrics))
            return stage.run(cfg)
        finally:
            os.chdir(cwd)

    return run


def _compose(args: argparse.Namespace) -> dict[str, Any]:
    raw = config_mod.compose(args.preset or "default", args.overrides)
    config_mod.write_params(raw, args.out)
    print(f"wrote {args.out} (preset {args.preset or 'default'})", file=sys.stderr)
    return {}


def _bench(args: argparse.Namespace) -> dict[str, Any]:
    from pathlib import Path

    from wm.bench import run

    skip = tuple(x.strip() for x in args.skip.split(",") if x.strip())
    return run(_load_cfg(args), seconds=args.seconds, skip=skip, out=Path(args.out))


def _import_videos(args: argparse.Namespace) -> dict[str, Any]:
    from wm.stages.import_videos import run

    from pathlib import Path

    if args.dir is not None and "=" in args.dir and not Path(args.dir).is_dir():  # an override, not a folder
        args.overrides.insert(0, args.dir)
        args.dir = None
    cfg = _load_cfg(args)
    if args.dir is None:  # the pipeline stage: the configured folders, metrics for DVC
        return run(cfg, out_dir=args.out, fps=args.fps)
    return run(cfg, args.dir, args.out, fps=args.fps, metrics_path=None)


def _action_free(args: argparse.Namespace) -> dict[str, Any]:
    from wm.stages.train_dynamics import run_action_free

    return run_action_free(_load_cfg(args))


def _play(args: argparse.Namespace) -> dict[str, Any]:
    from wm.play import run

    return run(_load_cfg(args), host=args.host, port=args.port, fps=args.fps, agent_dir=args.agent, rev=args.rev,
               game=not args.no_game, steps=args.steps, measure_s=args.measure, out=args.out,
               screenshot=args.screenshot, threads=args.threads)


# command -> (module in wm.stages, whether it trains and so can --resume)
STAGES = {
    "collect": ("collect", False),
    "shard": ("shard", False),
    "train-tokenizer": ("train_tokenizer", True),
    "cache-latents": ("cache_latents", False),
    "train-dynamics": ("train_dynamics", True),
    "finetune-agent": ("finetune_agent", True),
    "imagine-rl": ("imagine_rl", True),
    "evaluate": ("evaluate", False),
    "action-modes": ("action_modes", False),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wm", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def add_common(p: argparse.ArgumentParser) -> None:
        p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. collect.frames=2000")
        p.add_argument("--params", default="params.yaml", help="resolved params file (default: params.yaml)")
        p.add_argument("--preset", choices=config_mod.PRESETS, help="compose this preset instead of reading --params")

    for name, (module, trains) in STAGES.items():
        p = sub.add_parser(name, help=f"run the {module} stage")
        add_common(p)
        p.add_argument("--workdir", default=None, metavar="DIR",
                       help="write the stage's metrics, plots and logs under DIR/data/... instead of ./data/... "
                            "(a run by hand beside the pipeline's committed figures; the configured folders, "
                            "e.g. tokenizer.out_dir, are read and written where they are)")
        if trains:
            p.add_argument("--resume", action="store_true",
                           help="continue exactly from the stage's last checkpoint (same config)")
        if name == "collect":
            p.add_argument("--metrics", default=None, metavar="PATH",
                           help="write the metrics here instead of data/metrics/collect.json (the DVC stage's)")
        p.set_defaults(func=_stage(module, trains))

    p = sub.add_parser("compose", help="compose wm/conf into params.yaml for a preset")
    add_common(p)
    p.add_argument("--out", default="params.yaml")
    p.set_defaults(func=_compose)

    p = sub.add_parser("bench", help="throughput figures -> data/metrics/bench.json")
    add_common(p)
    p.add_argument("--seconds", type=float, default=8.0, help="measuring time per figure")
    p.add_argument("--skip", default="", help="comma-separated sections to leave out: "
                   "tokenizer,dynamics,generation,collect,loader")
    p.add_argument("--out", default="data/metrics/bench.json", help="where the JSON goes")
    p.set_defaults(func=_bench)

    from wm.inspect import add_parser as add_inspect

    add_inspect(sub)

    p = sub.add_parser("import-videos", help="import mp4/avi files as action-free shards (the import_videos stage)")
    p.add_argument("dir", nargs="?", default=None,
                   help="directory with .mp4/.avi files (default: videos.in_dir, data/videos; empty is fine there)")
    add_common(p)
    p.add_argument("--out", default=None, help="output shard directory (default: videos.out_dir, data/video_shards)")
    p.add_argument("--fps", type=float, default=None, help="resample to this frame rate (default: 60/env.frameskip)")
    p.set_defaults(func=_import_videos)

    p = sub.add_parser("action-free", help="the action-free experiment: dynamics with all / few labels + video / "
                       "few labels alone -> data/metrics/action_free.json")
    add_common(p)
    p.set_defaults(func=_action_free)

    p = sub.add_parser("play", help="play inside the world model in a browser (keyboard, side by side with the game)")
    add_common(p)
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (0.0.0.0 exposes it to the network)")
    p.add_argument("--fps", type=float, default=15.0,
                   help="frame cap; 15 = the game's own step rate (60 Hz / frameskip 4); 0 = as fast as it goes")
    p.add_argument("--agent", default=None, help="agent checkpoint dir (default: the PMPO policy's, else the agent's)")
    p.add_argument("--rev", default=None, help="play the checkpoints of this git revision (fetched with dvc get)")
    p.add_argument("--steps", type=int, default=None, help="sampler steps K per frame (default: the trained one)")
    p.add_argument("--no-game", action="store_true", help="world model only (no stable-retro game beside it)")
    p.add_argument("--measure", type=float, default=0.0, metavar="SECONDS",
                   help="play this long in headless chromium and write the page's frames/s and latency to --out")
    p.add_argument("--out", default="data/metrics/play.json")
    p.add_argument("--screenshot", default=None, metavar="PNG", help="with --measure: save the page as it ends")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads for the model (default 1: on a laptop the browser needs the other cores)")
    p.set_defaults(func=_play)
    return parser


def _keep_freed_memory() -> None:
    """Stop glibc from handing freed memory back to the OS after every step: on CPU training
    that costs 1-2 M page faults per step (a third of the step time, measured). Same effect as
    MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=<large>, but works however `wm` is launched."""
    import ctypes
    import ctypes.util

    if "MALLOC_MMAP_MAX_" in os.environ or not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_mmap_max = -1, -4
        libc.mallopt(m_mmap_max, 0)
        libc.mallopt(m_trim_threshold, 2**31 - 1)
    except (OSError, AttributeError):
        pass


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("WANDB_MODE", "offline")
    _keep_freed_memory()
    args = build_parser().parse_args(argv)
    from wm.errors import UserError

    try:
        metrics = args.func(args)
    except UserError as err:  # anything else is a bug: its traceback stays
        if os.environ.get("WM_DEBUG"):
            raise
        print(f"wm {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"wm {args.command}: interrupted; outputs were left as they were before this run", file=sys.stderr)
        return 130
    if metrics and args.command != "inspect":
        print(json.dumps(metrics, indent=2, sort_keys=True, default=str))
    return 1 if metrics and metrics.get("failed") else 0


if __name__ == "__main__":
    sys.exit(main())
