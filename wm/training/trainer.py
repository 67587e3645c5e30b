"""The training loop every stage shares.

It takes factories, not hard-coded parts: ``model_factory() -> nn.Module``, an objective
``loss_fn(model, batch) -> (loss, logs)`` (an ``nn.Module`` when it holds state, e.g. running
RMS statistics, which are then checkpointed too), and ``data_factory(dist, skip) -> iterator``
of batches that starts ``skip`` batches in (so a resumed run sees exactly the batches the
uninterrupted one would). Distributed wrapping (DDP/FSDP2), compile, precision,
checkpointing and logging are separate, swappable pieces (``wm/training/*``).

Checkpoints (``<out_dir>/checkpoint.pt``, atomic) hold model, optimizer, scheduler, loss
state, step, RNG and data position; ``fit(resume=True)`` continues exactly from one. A NaN
or inf loss stops the run with a clear error and leaves the last good checkpoint in place.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from wm.config import TrainConfig
from wm.errors import ConfigValueError, UserError
from wm.training.checkpoint import CheckpointError, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from wm.training.distributed import DistInfo, all_true, cleanup, init_distributed, wrap_model
from wm.training.logging import RunLogger
from wm.training.optim import make_optimizer, make_scheduler

CHECKPOINT = "checkpoint.pt"


class NonFiniteLossError(UserError, FloatingPointError):
    """The loss became NaN or inf; training stopped and the last good checkpoint was kept."""


def cpu_compiler_ready(model: nn.Module) -> bool:
    """Whether ``torch.compile`` can build kernels for ``model``: on the CPU inductor writes C++ and
    needs a compiler (g++ by default). Without one the default preset (which compiles the dynamics
    trainer) warns and trains eagerly, 1.2-1.3x slower, instead of failing at its first step."""
    import shutil
    import warnings

    param = next(model.parameters(), None)
    if param is None or param.device.type != "cpu":
        return True
    from torch._inductor import config as inductor_config

    names = [c for c in (os.environ.get("CXX"), *inductor_config.cpp.cxx) if c]
    if any(shutil.which(c) for c in names):
        return True
    warnings.warn(f"train.compile is on but no C++ compiler ({', '.join(names)}) is on PATH, which torch.compile "
                  "needs on the CPU; training eagerly (install g++, or set train.compile=false to silence this)",
                  stacklevel=2)
    return False


def compile_blocks(model: nn.Module, block_types: tuple[type, ...]) -> int:
    """Regional compilation: ``torch.compile`` each repeated block rather than the whole model.
    Every block shares one compiled code object, so the compile time does not grow with depth,
    and a new input shape (short/long/single-frame batches) recompiles one block, not the whole
    graph. Measured on 2 CPU cores (debug dynamics, 10 steps over 4 shapes): whole model 188 s
    of compiling, blocks 115 s; on an H100 the whole-model trainer spent its first 150 s
    compiling (data/metrics/gpu/h100). The recompile limit is raised for the variants one block
    legitimately has (spatial/temporal x grad/no-grad x shapes). Returns the blocks compiled (0 and
    eager when the CPU has no C++ compiler, see :func:`cpu_compiler_ready`)."""
    import torch._dynamo

    if not cpu_compiler_ready(model):
        return 0
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    blocks = [m for m in model.modules() if isinstance(m, block_types)]
    if not blocks:
        model.compile()
        return 0
    for m in blocks:
        m.compile()
    return len(blocks)


def _drop_compiled(model: nn.Module) -> list[tuple[nn.Module, Any]]:
    """Remove the compiled calls :func:`compile_blocks` set; (module, call) pairs to restore them."""
    saved = [(m, m._compiled_call_impl) for m in model.modules() if getattr(m, "_compiled_call_impl", None)]
    for m, _ in saved:
        m._compiled_call_impl = None
    return saved


@contextlib.contextmanager
def eager_blocks(model: nn.Module):
    """Run a module compiled by :func:`compile_blocks` eagerly inside the block: evaluation and
    generation feed a new shape at every step (a growing context, a KV cache, K-step loops), and
    compiling each of those costs far more than it saves (on 2 CPU cores a compiled bench's
    generation section spent its time recompiling: over 600 recompile log lines, 79 s)."""
    saved = _drop_compiled(model)
    try:
        yield model
    finally:
        for m, impl in saved:
            m._compiled_call_impl = impl


def autocast_context(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    if precision not in ("auto", "fp32", "bf16"):
        raise ConfigValueError(f"train.precision must be auto|fp32|bf16, got '{precision}'")
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch


def _full_state(model: nn.Module, opt: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Full (unsharded) model and optimizer state, on CPU; identical API for plain, DDP and FSDP."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    return get_state_dict(model, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def _set_full_state(model: nn.Module, opt: torch.optim.Optimizer | None, model_sd: dict, opt_sd: dict | None,
                    info: DistInfo) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

    opts = StateDictOptions(full_state_dict=True, broadcast_from_rank0=info.enabled)
    set_model_state_dict(model, model_sd, options=opts)
    if opt is not None and opt_sd is not None:
        set_optimizer_state_dict(model, opt, opt_sd, options=opts)


class Trainer:
    def __init__(
        self,
        *,
        name: str,
        cfg: TrainConfig,
        model_factory: Callable[[], nn.Module],
        loss_fn: Callable[[nn.Module, Any], tuple[torch.Tensor, dict[str, float]]],
        data_factory: Callable[[DistInfo, int], Iterator[Any]],
        out_dir: str | Path,
        run_config: dict[str, Any],
        live_dir: str | Path | None = None,
        evaluate: Callable[[nn.Module, int], dict[str, float]] | None = None,
        shard_types: tuple[type[nn.Module], ...] = (),
        compatible: Callable[[dict[str, Any]], bool] | None = None,
    ):
        self.name = name
        self.cfg = cfg
        self.model_factory = model_factory
        self.loss_fn = loss_fn
        self.data_factory = data_factory
        self.out_dir = Path(out_dir)
        self.run_config = run_config
        self.live_dir = Path(live_dir) if live_dir else self.out_dir / "live"
        self.evaluate = evaluate
        self.shard_types = shard_types
        self.compatible = compatible
        self.model: nn.Module | None = None  # the unwrapped model after fit()
        self.history: list[dict[str, float]] = []

    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / CHECKPOINT

    def main_process_model(self) -> nn.Module | None:
        """After ``fit``: the trained (unwrapped) model in eval mode on rank 0, where stages
        evaluate and write their outputs; ``None`` on the other ranks under torchrun. Blocks
        compiled for training run eagerly from here on (see :func:`eager_blocks`)."""
        if int(os.environ.get("RANK", "0")) != 0:
            return None
        if self.model is None:
            raise RuntimeError("fit() has not run")
        _drop_compiled(self.model)
        return self.model.eval()

    def _warm_start(self, model: nn.Module, src: Path) -> None:
        """``train.init_from``: a fresh run (new optimizer, schedule and step count) starting
        from another run's weights, e.g. retraining on a grown dataset (flows/retrain.py)."""
        path = src / CHECKPOINT if src.is_dir() or src.suffix != ".pt" else src
        if not path.exists():
            raise CheckpointError(f"train.init_from: no checkpoint at {path}; point it at a checkpoint dir "
                                  "(e.g. data/checkpoints/" + self.name + ") or set it to ''")
        load_trained(model, path)

    def fit(self, resume: bool = False) -> dict[str, Any]:
        cfg = self.cfg
        info = init_distributed(cfg.distributed)
        try:
            return self._fit(info, resume)
        finally:
            cleanup(info)

    def _fit(self, info: DistInfo, resume: bool) -> dict[str, Any]:
        cfg = self.cfg
        fit_start = time.perf_counter()
        if cfg.threads > 0:
            torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)  # identical init on every rank
        model = self.model_factory().to(info.device)
        self.model = model
        loss_state = self.loss_fn if isinstance(self.loss_fn, nn.Module) else None
        if loss_state is not None:
            loss_state.to(info.device)
        n_params = sum(p.numel() for p in model.parameters())

        ckpt = None
        if resume and self.checkpoint_path.exists():
            ckpt = load_checkpoint(self.checkpoint_path)
            if self.compatible is not None and not self.compatible(ckpt.get("config", {})):
                raise CheckpointError(
                    f"{self.checkpoint_path} was written with a different config; resume needs the same "
                    "one (only train.steps may change). Remove it to start afresh."
                )
        elif cfg.init_from:
            self._warm_start(model, Path(cfg.init_from))
        wrapped = wrap_model(model, info, self.shard_types)
        if cfg.compile:
            compile_blocks(wrapped, self.shard_types)
        opt = make_optimizer(wrapped, cfg)
        sched = make_scheduler(opt, cfg)
        start, position, earlier_s = 0, 0, 0.0
        if ckpt is not None:
            _set_full_state(wrapped, opt, ckpt["model"], ckpt["optimizer"], info)
            sched.load_state_dict(ckpt["scheduler"])
            if loss_state is not None and "loss_state" in ckpt:
                loss_state.load_state_dict(ckpt["loss_state"])
            start, position = int(ckpt["step"]), int(ckpt["data_position"])
            earlier_s = float(ckpt.get("elapsed_s", 0.0))
        else:
            torch.manual_seed(cfg.seed + 1000 * info.rank)  # per-rank randomness (masks, noise)
        # The loader may draw from the global RNG when it starts (worker seeds), and a generator
        # or DataLoader starts at its first batch, so that batch is taken before the saved RNG
        # state is restored: the loop then continues exactly. (A fresh run draws in the same order.)
        data = self.data_factory(info, position)
        if ckpt is not None:
            if start < cfg.steps:
                data = itertools.chain([next(data)], data)
            set_rng_state(ckpt["rng"][min(info.rank, len(ckpt["rng"]) - 1)])

        logger = RunLogger(self.live_dir, wandb_mode=cfg.wandb, project=self.name, config=self.run_config,
                           total_steps=cfg.steps, start_step=start, enabled=info.is_main, desc=f"train {self.name}")
        precision = autocast_context(cfg.precision, info.device)
        last_saved = start if ckpt is not None else None
        t0, tick_step = time.perf_counter(), start
        train_time, logs = 0.0, {}
        wrapped.train()
        try:
            for step in range(start, cfg.steps):
                batch = to_device(next(data), info.device)
                position += 1
                ts = time.perf_counter()
                with precision:
                    loss, logs = self.loss_fn(wrapped, batch)
                if not all_true(bool(torch.isfinite(loss).item()), info):
                    where = f"{self.checkpoint_path} (step {last_saved})" if last_saved is not None else "none yet"
                    raise NonFiniteLossError(
                        f"{self.name}: loss is {loss.item()} at step {step}; training stopped. Last good "
                        f"checkpoint: {where}. Lower train.lr or check the data, then resume or restart."
                    )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(wrapped.parameters(), cfg.grad_clip)
                opt.step()
                sched.step()
                train_time += time.perf_counter() - ts
                done = step + 1
                if done % cfg.log_every == 0 or done == cfg.steps:
                    now = time.perf_counter()
                    rate = (done - tick_step) / max(now - t0, 1e-9)
                    t0, tick_step = now, done
                    logs = {**logs, f"{self.name}/train/lr": sched.get_last_lr()[0],
                            f"{self.name}/train/grad_norm": float(grad_norm), f"{self.name}/train/steps_per_s": rate}
                    self.history.append({"step": done, **logs})
                    logger.log(done, logs)
                logger.progress(1, loss=f"{loss.item():.4f}")
                if self.evaluate is not None and (done % cfg.eval_every == 0 or done == cfg.steps):
                    wrapped.eval()
                    with torch.no_grad(), precision:
                        with eager_blocks(model):
                            eval_logs = self.evaluate(model, done)
                    wrapped.train()
                    logger.log(done, eval_logs, plot=True)
                    logs = {**logs, **eval_logs}
                if done % cfg.ckpt_every == 0 or done == cfg.steps:
                    self._save(wrapped, opt, sched, loss_state, done, position, info,
                               earlier_s + time.perf_counter() - fit_start)
                    last_saved = done
        finally:
            summary = {k: v for k, v in logs.items()}
            logger.close(summary)
        # earlier_processes_s: the time of the processes this run resumed from, up to their last
        # checkpoint (a stage adds it to its own wall time, so a resumed run reports its whole cost)
        return {"steps": cfg.steps, "params": n_params, "train_time_s": train_time, "earlier_processes_s": earlier_s,
                "train_steps_per_s": (cfg.steps - start) / max(train_time, 1e-9), "last_logs": logs}

    def _save(self, model: nn.Module, opt: torch.optim.Optimizer, sched: Any, loss_state: nn.Module | None,
              step: int, position: int, info: DistInfo, elapsed_s: float) -> None:
        model_sd, opt_sd = _full_state(model, opt)  # collective under FSDP: every rank calls it
        rngs = [rng_state()]
        if info.enabled:
            import torch.distributed as dist

            gathered: list[Any] = [None] * info.world_size
            dist.all_gather_object(gathered, rngs[0])
            rngs = gathered
        if info.is_main:
            state = {
                "model": model_sd, "optimizer": opt_sd, "scheduler": sched.state_dict(), "step": step,
                "data_position": position, "rng": rngs, "config": self.run_config, "elapsed_s": elapsed_s,
            }
            if loss_state is not None:
                state["loss_state"] = loss_state.state_dict()
            save_checkpoint(self.checkpoint_path, state, self.run_config)
        if info.enabled:
            import torch.distributed as dist

            dist.barrier()


def load_trained(model: nn.Module, path: str | Path) -> dict[str, Any]:
    """Load a trained model's weights from a checkpoint; returns the checkpoint dict."""
    from wm.training.checkpoint import load_model_state

    ckpt = load_checkpoint(path)
    if "model" not in ckpt:
        raise CheckpointError(f"{path} holds no model weights")
    load_model_state(model, ckpt["model"], path)
    return ckpt
