"""collect: play the real game with a policy and store episodes under ``collect.out_dir``.

Each worker process owns one emulator (a stable-retro rule), chooses its own actions and
writes its own episode files, so nothing crosses a process boundary per step; only progress
counts come back. Measured on 2 cores: sending frames to a parent every step runs at 0.9x
one raw emulator, while self-contained workers approach 2x.

Determinism: episode ``i`` is played with seed ``episode_seed(collect.seed, i)`` and worker
``w`` plays episodes ``w, w + n, w + 2n, ...`` until its share of ``collect.frames`` is
stored, so the output is a function of (config, seed, workers), whoever runs the worker
(this stage's processes or Dask tasks, ``collect.backend``).
"""

from __future__ import annotations

import math
import multiprocessing as mp
import queue as queue_mod
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from wm.atomic import atomic_dir, write_json_atomic
from wm.config import Config, EnvConfig
from wm.data.episodes import EpisodeInfo, save_episode
from wm.envs.rollout import episode_seed, play_episode
from wm.errors import ConfigValueError

METRICS_PATH = Path("data/metrics/collect.json")
PROGRESS_EVERY = 256  # agent steps between progress messages


def collect_worker(
    env_cfg: EnvConfig,
    policy_name: str,
    sticky_mean_steps: float,
    base_seed: int,
    worker: int,
    n_workers: int,
    frame_budget: int,
    out_dir: str,
    progress: Any = None,
) -> dict[str, Any]:
    """Play episodes ``worker, worker + n_workers, ...`` until ``frame_budget`` agent steps
    are stored in ``out_dir``; return their manifest entries and the emulator frame count."""
    from wm.envs.policies import make_policy
    from wm.envs.retro import RetroEnv

    env = RetroEnv(env_cfg)
    policy = make_policy(policy_name, env.action_space.n, sticky_mean_steps, action_map=env_cfg.action_map,
                         fire=tuple(env_cfg.tap_buttons), crop=env_cfg.crop)
    infos: list[dict[str, Any]] = []
    stored = 0
    pending = 0

    def on_step() -> None:
        nonlocal pending
        pending += 1
        if progress is not None and pending >= PROGRESS_EVERY:
            progress.put(("steps", worker, pending))
            pending = 0

    k = 0
    while stored < frame_budget:
        index = worker + k * n_workers
        seed = episode_seed(base_seed, index)
        ep = play_episode(env, policy, seed, on_step)
        ep.meta.update(
            episode=index, game=env_cfg.game, state=env_cfg.state, policy=policy_name,
            frameskip=env_cfg.frameskip, buttons=env.buttons, action_free=False,
        )
        name = f"ep{index:06d}.npz"
        save_episode(ep, Path(out_dir) / name)
        info = EpisodeInfo(episode=index, length=len(ep), ret=ep.ret, seed=seed, file=name,
                           extra={"truncated": ep.meta["truncated"]})
        infos.append(info.to_json())
        stored += len(ep)
        k += 1
        if progress is not None:
            progress.put(("steps", worker, pending))
            pending = 0
            progress.put(("episode", worker, info.ret))
    env.close()
    return {"worker": worker, "episodes": infos, "emu_frames": env.emu_frames, "steps": stored}


def _worker_main(args: tuple, progress: Any, results: Any) -> None:
    try:
        results.put(("ok", collect_worker(*args, progress=progress)))
    except BaseException:  # report, do not hang the parent
        results.put(("error", traceback.format_exc()))


def run_workers(cfg: Config, out_dir: Path, timing: dict[str, float] | None = None) -> list[dict[str, Any]]:
    """Run the collection workers in subprocesses. ``timing``, when given, receives the agent
    steps and seconds counted once every worker has started (throughput without start-up)."""
    from tqdm import tqdm

    c = cfg.collect
    n = c.workers
    budget = math.ceil(c.frames / n)
    ctx = mp.get_context("spawn")  # a clean interpreter per emulator
    progress, results = ctx.Queue(), ctx.Queue()
    procs = []
    for w in range(n):
        args = (cfg.env, c.policy, c.sticky_mean_steps, c.seed, w, n, budget, str(out_dir))
        p = ctx.Process(target=_worker_main, args=(args, progress, results), daemon=True)
        p.start()
        procs.append(p)
    outputs: list[dict[str, Any]] = []
    returns: list[float] = []
    bar = tqdm(total=budget * n, unit="frame", desc=f"collect ({c.policy}, {n} workers)", dynamic_ncols=True)
    start = time.perf_counter()
    started: set[int] = set()
    steady_start, steady_steps = 0.0, 0
    try:
        while len(outputs) < n:
            try:
                kind, *rest = progress.get(timeout=0.5)
                if kind == "steps":
                    bar.update(rest[1])
                    if len(started) == n:
                        steady_steps += rest[1]
                    else:
                        started.add(rest[0])
                        if len(started) == n:
                            steady_start = time.perf_counter()
                else:
                    returns.append(rest[1])
                    bar.set_postfix(episodes=len(returns), mean_return=f"{np.mean(returns):.0f}",
                                    steps_per_s=f"{bar.n / (time.perf_counter() - start):.0f}")
            except queue_mod.Empty:
                pass
            while True:
                try:
                    status, payload = results.get_nowait()
                except queue_mod.Empty:
                    break
                if status == "error":
                    raise RuntimeError(f"a collection worker failed:\n{payload}")
                outputs.append(payload)
            if len(outputs) < n and not any(p.is_alive() for p in procs) and results.empty():
                codes = [p.exitcode for p in procs]
                raise RuntimeError(f"collection workers exited without a result (exit codes {codes})")
        if timing is not None and steady_start:
            timing.update(steady_steps=steady_steps, steady_s=time.perf_counter() - steady_start)
    finally:
        bar.close()
        for p in procs:
            if p.is_alive():
                p.terminate()
            p.join(timeout=5)
    return sorted(outputs, key=lambda o: o["worker"])


def run_workers_dask(cfg: Config, out_dir: str) -> list[dict[str, Any]]:
    """The same workers as Dask tasks (``collect_worker`` each, retried twice): on a local
    cluster of ``collect.workers`` processes, or on the scheduler at ``collect.dask_address``
    (the output directory must then be shared by its workers)."""
    from distributed import Client, LocalCluster

    c = cfg.collect
    budget = math.ceil(c.frames / c.workers)
    args = [(cfg.env, c.policy, c.sticky_mean_steps, c.seed, w, c.workers, budget, out_dir) for w in range(c.workers)]
    cluster = None
    if not c.dask_address:
        cluster = LocalCluster(n_workers=c.workers, threads_per_worker=1, processes=True, dashboard_address=None)
    try:
        with Client(c.dask_address or cluster) as client:
            futures = [client.submit(collect_worker, *a, retries=2, pure=False) for a in args]
            outputs = client.gather(futures)
    finally:
        if cluster is not None:
            cluster.close()
    return sorted(outputs, key=lambda o: o["worker"])


def summarize(episodes: list[dict[str, Any]]) -> dict[str, float]:
    returns = np.array([e["ret"] for e in episodes], dtype=np.float64)
    lengths = np.array([e["length"] for e in episodes], dtype=np.float64)
    return {
        "episodes": len(episodes),
        "frames": int(lengths.sum()),
        "mean_return": float(returns.mean()),
        "std_return": float(returns.std()),
        "min_return": float(returns.min()),
        "max_return": float(returns.max()),
        "mean_length": float(lengths.mean()),
    }


def run(cfg: Config, metrics_path: str | Path = METRICS_PATH) -> dict[str, Any]:
    from wm.envs.policies import check_policy_name
    from wm.envs.retro import check_game, measure_raw_steps_per_s

    c = cfg.collect
    check_policy_name(c.policy)
    if c.workers < 1 or c.frames < 1:
        raise ConfigValueError("collect.workers and collect.frames must be >= 1")
    check_game(cfg.env.game, cfg.env.state)
    # Measured first, alone, so it has a core to itself: the yardstick for env_steps_per_s.
    raw = measure_raw_steps_per_s(cfg.env.game, cfg.env.state, c.raw_bench_seconds, c.seed)

    if c.backend not in ("processes", "dask"):
        raise ConfigValueError(f"collect.backend must be 'processes' or 'dask', got '{c.backend}'")
    out = Path(c.out_dir)
    with atomic_dir(out) as tmp:
        start = time.perf_counter()
        if c.backend == "dask":
            outputs = run_workers_dask(cfg, str(tmp.resolve()))
        else:
            outputs = run_workers(cfg, tmp)
        wall = time.perf_counter() - start
        episodes = sorted((e for o in outputs for e in o["episodes"]), key=lambda e: e["episode"])
        emu_frames = sum(o["emu_frames"] for o in outputs)
        manifest = {
            "kind": "rollouts",
            "env": {"game": cfg.env.game, "state": cfg.env.state, "frameskip": cfg.env.frameskip,
                    "sticky_prob": cfg.env.sticky_prob, "height": cfg.env.height, "width": cfg.env.width,
                    "action_map": cfg.env.action_map},
            "policy": c.policy,
            "seed": c.seed,
            "workers": c.workers,
            "episodes": episodes,
        }
        write_json_atomic(tmp / "manifest.json", manifest)

    metrics = {
        **summarize(episodes),
        "emulator_frames": int(emu_frames),
        "wall_s": round(wall, 2),
        "env_steps_per_s": emu_frames / wall,
        "agent_steps_per_s": sum(e["length"] for e in episodes) / wall,
        "raw_env_steps_per_s": raw,
        "speedup_vs_raw": emu_frames / wall / raw,
        "workers": c.workers,
        "policy": c.policy,
        "backend": c.backend,
    }
    write_json_atomic(metrics_path, metrics)
    return metrics
