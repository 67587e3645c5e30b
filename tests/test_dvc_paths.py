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
            "train_dynamics": "dynamics", "finetune_agent": "agent", "imagine_rl": "rl", "import_videos": "videos"}
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


# commands that run a function of another stage's module (the experiment dvc.yaml files)
CMD_MODULES = {"action-free": "train_dynamics"}
STAGE_OUT_DIRS = {"action_free": "action_free"}


def test_dvc_artifacts_are_the_ones_the_stages_write():
    """Per stage module, everything the module names under data/ is declared by the stages that
    run it (dvc.yaml and experiments/*/dvc.yaml), and everything they declare it writes."""
    cfg = config_mod.load(ROOT / "params.yaml")
    declared: dict[str, set[Path]] = {}
    out_dirs: dict[str, set[Path]] = {}
    for dvc_file in [ROOT / "dvc.yaml", *sorted((ROOT / "experiments").glob("*/dvc.yaml"))]:
        for name, stage in yaml.safe_load(dvc_file.read_text())["stages"].items():
            command = stage["cmd"].split()[1]
            module = CMD_MODULES.get(command, command.replace("-", "_"))
            d = _declared(stage)
            declared.setdefault(module, set()).update(d["outs"] | d["metrics"] | d["plots"])
            section = OUT_DIRS.get(name) or STAGE_OUT_DIRS.get(name)
            out_dirs.setdefault(module, set()).update({Path(getattr(cfg, section).out_dir)} if section else set())
    problems = []
    for module_name, everything in declared.items():
        files, live = _written(importlib.import_module("wm.stages." + module_name))
        code = files | out_dirs[module_name] | {d / PLOTS_UNDER_LIVE for d in live}
        for path in sorted(code - everything):
            problems.append(f"{module_name}: writes {path}, which no dvc.yaml declares")
        for path in sorted(everything - code):
            problems.append(f"{module_name}: a dvc.yaml declares {path}, which the stage does not write")
    assert not problems, "\n".join(problems)
