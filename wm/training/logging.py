"""Run logging on rank 0: dvclive (so `dvc plots`/`dvc exp show` see every run), wandb
(offline unless asked; never a login), and a progress bar with loss, steps/s and ETA."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

from wm.errors import ConfigValueError


class RunLogger:
    def __init__(self, live_dir: str | Path, *, wandb_mode: str, project: str, config: dict[str, Any],
                 total_steps: int, start_step: int = 0, enabled: bool = True, desc: str = "train"):
        self.enabled = enabled
        self.live = None
        self.fallback: Path | None = None
        self.wandb_run = None
        self.bar = None
        if not enabled:
            return
        from tqdm import tqdm

        try:
            from dvclive import Live
        except ImportError as err:  # e.g. a bare GPU image: the figures go to history.jsonl (no plots)
            warnings.warn(f"dvclive unavailable ({err}): per-step figures go to {live_dir}/history.jsonl",
                          stacklevel=2)
            self.fallback = Path(live_dir) / "history.jsonl"
            self.fallback.parent.mkdir(parents=True, exist_ok=True)
            if start_step == 0:
                self.fallback.unlink(missing_ok=True)
        else:
            # dvcyaml=None: dvc.yaml is ours; save_dvc_exp=False: the DVC stage owns experiments.
            self.live = Live(str(live_dir), dvcyaml=None, save_dvc_exp=False, resume=start_step > 0)
        if wandb_mode not in ("offline", "disabled", "online"):
            raise ConfigValueError(f"train.wandb must be offline|disabled|online, got '{wandb_mode}'")
        mode = os.environ.get("WANDB_MODE", wandb_mode) if wandb_mode != "disabled" else "disabled"
        if mode != "disabled":
            try:
                import wandb

                self.wandb_run = wandb.init(project="wm", name=project, mode=mode, config=config,
                                            dir=str(Path(live_dir).parent), reinit="finish_previous")
            except Exception as err:  # logging must never kill training
                warnings.warn(f"wandb disabled: {err}", stacklevel=2)
        self.bar = tqdm(total=total_steps, initial=start_step, desc=desc, dynamic_ncols=True, unit="step")

    def log(self, step: int, metrics: dict[str, float], plot: bool = True) -> None:
        if not self.enabled:
            return
        if self.wandb_run is not None:
            self.wandb_run.log(metrics, step=step)
        numeric = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self.fallback is not None:
            with self.fallback.open("a") as f:
                f.write(json.dumps({"step": step, **numeric}) + "\n")
        if self.live is None:
            return
        self.live.step = step
        for k, v in numeric.items():
            self.live.log_metric(k, v, plot=plot)
        self.live.next_step()  # writes the TSV rows and metrics.json now (crash-safe)

    def progress(self, n: int, **postfix: Any) -> None:
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix(postfix, refresh=False)

    def close(self, summary: dict[str, Any] | None = None) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.close()
        if self.live is not None:
            if summary:
                for k, v in summary.items():
                    if isinstance(v, (int, float)) and not isinstance(v, bool):
                        self.live.summary[k] = v
            self.live.end()
        if self.wandb_run is not None:
            if summary:
                self.wandb_run.summary.update({k: v for k, v in summary.items() if v is not None})
            self.wandb_run.finish()
