"""Collection fanned out as Prefect tasks on a Dask task runner (prefect-dask).

Each task is one collection worker (``wm.stages.collect.collect_worker``): it owns one
emulator and writes its own episode files; the collect stage then merges their manifests.
A local Dask cluster (one process per worker) by default; ``collect.dask_address`` points
at an existing cluster when one machine is not enough (the output dir must then be shared).
"""

from __future__ import annotations

import math
from typing import Any

from prefect import flow, task
from prefect_dask import DaskTaskRunner

from wm.config import Config


@task(retries=2, retry_delay_seconds=[5, 30])
def collect_task(args: tuple) -> dict[str, Any]:
    from wm.stages.collect import collect_worker

    return collect_worker(*args)


def run_workers_dask(cfg: Config, out_dir: str) -> list[dict[str, Any]]:
    c = cfg.collect
    if c.dask_address:
        runner = DaskTaskRunner(address=c.dask_address)
    else:
        runner = DaskTaskRunner(cluster_kwargs={"n_workers": c.workers, "threads_per_worker": 1, "processes": True,
                                                "dashboard_address": None})

    @flow(name="wm-collect", task_runner=runner, log_prints=True)
    def collect_flow() -> list[dict[str, Any]]:
        budget = math.ceil(c.frames / c.workers)
        futures = [
            collect_task.submit((cfg.env, c.policy, c.sticky_mean_steps, c.seed, w, c.workers, budget, out_dir))
            for w in range(c.workers)
        ]
        return [f.result() for f in futures]

    return sorted(collect_flow(), key=lambda o: o["worker"])
