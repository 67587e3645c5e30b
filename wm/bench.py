"""`wm bench`: the numbers that decide where speed work matters, in data/metrics/bench.json.

- tokenizer / dynamics training steps/s and tokens/s at the preset's sizes (synthetic
  batches of the real shapes, after warm-up);
- dynamics generation frames/s with K = 1, 4, Kmax sampling steps, with and without the KV
  cache, one stream at the preset's context length;
- collection env steps/s with 1 worker and with all workers, against one raw emulator;
- data-loader clips/s against what the tokenizer trainer consumes (the loader must not
  starve the trainer), when shards exist;
- peak memory (host RSS; CUDA peak when on a GPU), and on a GPU the bf16 throughput and
  model FLOPs utilisation (6 * params * tokens / time / peak).
"""

from __future__ import annotations

import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from wm.atomic import write_json_atomic
from wm.config import Config
from wm.errors import ConfigValueError
from wm.timing import synced_clock

BENCH_PATH = Path("data/metrics/bench.json")


def _timed_steps(step, seconds: float, warmup: int = 2, min_steps: int = 3, device: torch.device | None = None
                 ) -> float:
    for _ in range(warmup):
        step()
    n, start = 0, synced_clock(device)
    while n < min_steps or synced_clock(device) - start < seconds:
        step()
        n += 1
    return n / (synced_clock(device) - start)


def bench_tokenizer(cfg: Config, seconds: float, device: torch.device) -> dict[str, float]:
    from wm.models.tokenizer import Tokenizer
    from wm.objectives.mae import TokenizerLoss
    from wm.training.optim import make_optimizer
    from wm.models.transformer import Block
    from wm.training.trainer import autocast_context, compile_blocks

    t = cfg.tokenizer
    model = Tokenizer(t, cfg.env.height, cfg.env.width).to(device)
    loss_fn = TokenizerLoss(t, None).to(device)
    opt = make_optimizer(model, t.train)
    if t.train.compile:
        compile_blocks(model, (Block,))  # as the trainer does; the warm-up steps absorb the compile time
    frames = torch.randint(0, 256, (t.train.batch_size, t.train.clip_len, 3, cfg.env.height, cfg.env.width),
                           dtype=torch.uint8, device=device)
    ctx = autocast_context(t.train.precision, device)

    def step() -> None:
        with ctx:
            loss, _ = loss_fn(model, {"frames": frames})
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    rate = _timed_steps(step, seconds, device=device)
    tokens = t.train.batch_size * t.train.clip_len * (model.n_patches + t.n_latents) * 2  # encoder + decoder
    params = sum(p.numel() for p in model.parameters())
    return {"tokenizer/train_steps_per_s": rate, "tokenizer/tokens_per_s": rate * tokens,
            "tokenizer/frames_per_s": rate * t.train.batch_size * t.train.clip_len, "tokenizer/params": params,
            "tokenizer/flops_per_s": 6 * params * rate * tokens / 2}


def bench_dynamics(cfg: Config, seconds: float, device: torch.device) -> tuple[dict[str, float], Any]:
    from wm.models.dynamics import Dynamics
    from wm.objectives.shortcut import ShortcutLoss
    from wm.training.optim import make_optimizer
    from wm.models.transformer import Block
    from wm.training.trainer import autocast_context, compile_blocks

    d, t = cfg.dynamics, cfg.tokenizer
    model = Dynamics(d, len(cfg.env.action_map), t.n_latents, t.latent_dim).to(device)
    loss_fn = ShortcutLoss.from_config(d)
    opt = make_optimizer(model, d.train)
    if d.train.compile:
        compile_blocks(model, (Block,))  # as the trainer does
    batch = {"latents": torch.tanh(torch.randn(d.train.batch_size, d.short_len, t.n_latents, t.latent_dim,
                                               device=device)),
             "actions": torch.randint(0, len(cfg.env.action_map), (d.train.batch_size, d.short_len), device=device)}
    ctx = autocast_context(d.train.precision, device)

    def step() -> None:
        with ctx:
            loss, _ = loss_fn(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    rate = _timed_steps(step, seconds, device=device)
    tokens = d.train.batch_size * d.short_len * (model.tokens_per_step + d.model.registers)
    params = sum(p.numel() for p in model.parameters())
    return {"dynamics/train_steps_per_s": rate, "dynamics/tokens_per_s": rate * tokens, "dynamics/params": params,
            "dynamics/flops_per_s": 6 * params * rate * tokens}, model


def bench_generation(cfg: Config, model: Any, device: torch.device, budget_s: float) -> dict[str, float]:
    from wm.training.trainer import eager_blocks

    d, t = cfg.dynamics, cfg.tokenizer
    model.eval()
    ctx = torch.tanh(torch.randn(1, d.context, t.n_latents, t.latent_dim, device=device))
    prev = torch.randint(0, len(cfg.env.action_map), (1, d.context + d.horizon), device=device)
    out = {}
    with eager_blocks(model):  # generation feeds a new shape at every step: compiling each costs more
        out.update(_generation_fps(cfg, model, device, budget_s, ctx, prev))
    out["fps/kv_speedup_k4"] = out["fps/k4_kv"] / out["fps/k4_nokv"]
    return out


def _generation_fps(cfg: Config, model: Any, device: torch.device, budget_s: float, ctx: torch.Tensor,
                    prev: torch.Tensor) -> dict[str, float]:
    from wm.world_model import rollout

    d = cfg.dynamics
    out = {}
    for k in (1, 4, d.k_max):
        for kv in (True, False):
            rollout(model, ctx, prev[:, : d.context], prev[:, d.context : d.context + 1], k, d.ctx_noise,
                    use_cache=kv)  # warm-up
            # Always the whole horizon after the preset's context, as the dynamics stage measures
            # it (the uncached cost grows with the history, so a shorter run would flatter it),
            # repeated until the measurement has taken long enough.
            frames, elapsed = 0, 0.0
            while frames == 0 or elapsed < budget_s / 12:
                start = synced_clock(device)
                rollout(model, ctx, prev[:, : d.context], prev[:, d.context : d.context + d.horizon], k,
                        d.ctx_noise, use_cache=kv)
                elapsed += synced_clock(device) - start
                frames += d.horizon
            out[f"fps/k{k}_{'kv' if kv else 'nokv'}"] = frames / elapsed
    return out


def bench_collection(cfg: Config, seconds: float) -> dict[str, float]:
    import dataclasses

    from wm.envs.retro import measure_raw_steps_per_s
    from wm.stages.collect import run_workers

    raw = measure_raw_steps_per_s(cfg.env.game, cfg.env.state, seconds, 0)
    out = {"collect/raw_env_steps_per_s": raw}
    for workers in sorted({1, cfg.collect.workers}):
        frames = int(raw * seconds * workers / cfg.env.frameskip)
        c = dataclasses.replace(cfg.collect, workers=workers, frames=max(frames, 200))
        tmp = Path(tempfile.mkdtemp(prefix="wm-bench-"))
        timing: dict[str, float] = {}
        try:
            start = time.perf_counter()
            outputs = run_workers(dataclasses.replace(cfg, collect=c), tmp, timing)
            wall = time.perf_counter() - start
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        # exclude process start-up, which a short run overweights; a slow machine can finish the
        # budget before every worker has reported twice, leaving an empty steady window: then the whole run
        if timing.get("steady_s", 0) > 0.5 and timing.get("steady_steps", 0) > 0:
            rate = timing["steady_steps"] * cfg.env.frameskip / timing["steady_s"]
        else:
            rate = sum(o["emu_frames"] for o in outputs) / wall
        out[f"collect/env_steps_per_s_{workers}w"] = rate
        out[f"collect/speedup_{workers}w"] = rate / raw
    return out


def bench_loader(cfg: Config, seconds: float, consume_steps_per_s: float) -> dict[str, float]:
    from wm.data.shards import make_clip_loader

    t = cfg.tokenizer.train
    loader = make_clip_loader(cfg.shard.out_dir, "train", t.clip_len, t.batch_size, num_workers=t.num_workers,
                              infinite=True, shuffle_buffer=cfg.data.shuffle_buffer)
    it = iter(loader)
    rate = _timed_steps(lambda: next(it), seconds, warmup=3)
    return {"loader/batches_per_s": rate, "loader/clips_per_s": rate * t.batch_size,
            "loader/trainer_batches_per_s": consume_steps_per_s,
            "loader/headroom": rate / max(consume_steps_per_s, 1e-9)}


SECTIONS = ("tokenizer", "dynamics", "generation", "collect", "loader")


def run(cfg: Config, seconds: float = 8.0, skip: tuple[str, ...] = (), out: Path = BENCH_PATH) -> dict[str, Any]:
    """Every section unless named in ``skip`` (e.g. "collect" on a machine without the emulator;
    "generation" needs "dynamics")."""
    from rich.console import Console
    from rich.table import Table

    unknown = sorted(set(skip) - set(SECTIONS))
    if unknown:
        raise ConfigValueError(f"wm bench --skip: unknown section(s) {unknown}; sections are {', '.join(SECTIONS)}")
    skip = tuple(skip)
    if "dynamics" in skip and "generation" not in skip:  # generation runs the benchmarked dynamics model
        print("wm bench: generation needs the dynamics section; skipping it too", file=sys.stderr)
        skip += ("generation",)
    from wm.training.distributed import compute_device

    device = compute_device()
    start = time.perf_counter()
    results: dict[str, Any] = {"preset": cfg.preset_name, "device": str(device), "threads": torch.get_num_threads(),
                               "skipped": sorted(skip)}
    if device.type == "cuda":
        results["device_name"] = torch.cuda.get_device_name()
        results["torch"] = torch.__version__
    if "tokenizer" not in skip:
        results.update(bench_tokenizer(cfg, seconds, device))
        results["tokenizer/compiled"] = bool(cfg.tokenizer.train.compile)
    if "dynamics" not in skip:
        dyn, model = bench_dynamics(cfg, seconds, device)
        results.update(dyn)
        results["dynamics/compiled"] = bool(cfg.dynamics.train.compile)
        if "generation" not in skip:
            results.update(bench_generation(cfg, model, device, budget_s=6 * seconds))
    if "collect" not in skip:
        results.update(bench_collection(cfg, seconds))
    if "loader" not in skip and "tokenizer/train_steps_per_s" in results and (
            Path(cfg.shard.out_dir) / "manifest.json").exists():
        results.update(bench_loader(cfg, seconds / 2, results["tokenizer/train_steps_per_s"]))
    results["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device.type == "cuda":
        results["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
        peak = _gpu_peak_flops()
        if peak:
            results["peak_bf16_flops"] = peak
            for part in ("tokenizer", "dynamics"):
                if f"{part}/flops_per_s" in results:
                    results[f"{part}/mfu"] = results[f"{part}/flops_per_s"] / peak
    results["wall_s"] = round(time.perf_counter() - start, 1)
    write_json_atomic(out, results)
    table = Table(title=f"wm bench ({cfg.preset_name}, {device})")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for k, v in results.items():
        table.add_row(k, f"{v:,.2f}" if isinstance(v, float) else str(v))
    Console(stderr=True).print(table)
    return results


def _gpu_peak_flops() -> float | None:
    """Dense bf16 peak of known GPUs (vendor datasheets), for MFU."""
    name = torch.cuda.get_device_name()
    for key, flops in (("H200", 989e12), ("H100", 989e12), ("A100", 312e12), ("L4", 121e12), ("4090", 165e12)):
        if key in name:
            return flops
    return None

