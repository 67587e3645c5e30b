"""dvc.yaml's artifacts follow the code: every file or folder a stage writes under ``data/``
(its module's ``*_PATH``/``*_DIR`` constants and its config's ``out_dir``) is declared in that
stage's outs, metrics or plots, and every declared artifact is one the stage writes. So a path
renamed on one side fails here rather than leaving DVC tracking a file nobody writes (or not
tracking one that is)."""

import importlib
from pathlib import Path

import yaml

from wm import config as config_mod

ROOT = Path(__file__).resolve().parents[1]
OUT_DIRS = {"collect": "collect", "shard": "shard", "train_tokenizer": "tokenizer", "cache_latents": "latents",
            "train_dynamics": "dynamics", "finetune_agent": "agent", "imagine_rl": "rl"}
PLOTS_UNDER_LIVE = Path("plots/metrics")  # dvclive writes a run's plots there


def _declared(stage: dict) -> dict[str, set[Path]]:
    def names(entries) -> set[Path]:
        return {Path(next(iter(e)) if isinstance(e, dict) else e) for e in entries or []}

    return {"outs": names(stage.get("outs")), "metrics": names(stage.get("metrics")), "plots": names(stage.get("plots"))}


def _written(module) -> tuple[set[Path], set[Path]]:
    """(files and folders the stage module names under data/, its live dirs)."""
    files, live = set(), set()
    for name, value in vars(module).items():
        if isinstance(value, Path) and value.parts[:1] == ("data",):
            (live if name.endswith("LIVE_DIR") else files).add(value)
    return files, live


def test_dvc_artifacts_are_the_ones_the_stages_write():
    cfg = config_mod.load(ROOT / "params.yaml")
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    problems = []
    for name, stage in stages.items():
        module = importlib.import_module("wm.stages." + stage["cmd"].split()[1].replace("-", "_"))
        files, live = _written(module)
        declared = _declared(stage)
        section = OUT_DIRS.get(name)
        out_dir = {Path(getattr(cfg, section).out_dir)} if section else set()
        code = files | out_dir | {d / PLOTS_UNDER_LIVE for d in live}
        everything = declared["outs"] | declared["metrics"] | declared["plots"]
        for path in sorted(code - everything):
            problems.append(f"{name}: writes {path}, which dvc.yaml does not declare")
        for path in sorted(everything - code):
            problems.append(f"{name}: dvc.yaml declares {path}, which the stage does not write")
    assert not problems, "\n".join(problems)
