"""Shared fixtures: the debug config, and one small real rollout + shard set per session."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from wm import config as config_mod

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's bin: wm, dvc, prefect


def free_port() -> int:
    """A loopback port free at the time of asking (the OS picks it), for DDP ranks and servers."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def debug_raw() -> dict:
    return config_mod.compose("debug")


def make_cfg(raw: dict, *overrides: str) -> config_mod.Config:
    return config_mod.from_dict(config_mod.Config, config_mod.apply_overrides(raw, overrides))


@pytest.fixture(scope="session")
def debug_cfg(debug_raw) -> config_mod.Config:
    return make_cfg(debug_raw)


@pytest.fixture(scope="session")
def debug_data(tmp_path_factory, debug_raw):
    """Run the real collect + shard stages (debug preset) once into a temp dir."""
    from wm.stages import collect, shard

    base = tmp_path_factory.mktemp("debug_data")
    cfg = make_cfg(
        debug_raw,
        f"collect.out_dir={base / 'rollouts'}",
        f"shard.in_dir={base / 'rollouts'}",
        f"shard.out_dir={base / 'shards'}",
    )
    cwd = os.getcwd()
    os.chdir(base)  # metrics land under base/data/metrics, not in the repo
    try:
        metrics = collect.run(cfg)
        shard_metrics = shard.run(cfg)
    finally:
        os.chdir(cwd)
    return {"cfg": cfg, "dir": base, "collect": metrics, "shard": shard_metrics}


def env_with_venv() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("WANDB_MODE", "offline")
    return env


def copy_repo(dst: Path) -> Path:
    """The repository's tracked files (plus uncommitted edits) copied into ``dst``."""
    import subprocess

    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    for rel in files:
        src = ROOT / rel
        if src.is_file() and (not rel.startswith("data/") or rel.startswith(("data/collected/", "data/videos/"))):
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)
    return dst


def save_init_model(path: Path, model, cfg: config_mod.Config) -> None:
    """A freshly initialised model saved as a stage would save it (weights + the run's config)."""
    from wm.config import to_dict
    from wm.training.checkpoint import save_checkpoint
    from wm.training.trainer import CHECKPOINT

    save_checkpoint(Path(path) / CHECKPOINT, {"model": model.state_dict(), "step": 0, "config": to_dict(cfg)},
                    to_dict(cfg))


def load_script(name: str):
    """The module of scripts/NAME.py (the scripts are not a package); scripts/ is on sys.path while
    it loads, as when the script runs (some import their neighbours)."""
    import importlib.util

    scripts = Path(__file__).resolve().parents[1] / "scripts"
    spec = importlib.util.spec_from_file_location(name, scripts / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(scripts))
    try:
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(scripts))
    return mod


def random_block_tokenizer(t: config_mod.TokenizerConfig) -> config_mod.TokenizerConfig:
    """``t`` with PyTorch's random init in the encoder's and decoder's blocks, for untrained
    tokenizers that stand in for trained ones: the configured identity start (``zero_residual``)
    mixes no tokens yet, so its latents would not depend on the frame nor its frames on the latents."""
    import dataclasses

    return dataclasses.replace(t, encoder=dataclasses.replace(t.encoder, zero_residual=False),
                               decoder=dataclasses.replace(t.decoder, zero_residual=False))


def init_tokenizer_and_latents(base: Path, cfg: config_mod.Config):
    """Debug-preset tokenizer (seeded init, random blocks: ``random_block_tokenizer``) in
    ``cfg.tokenizer.out_dir``, and the real cache_latents stage run with it from ``base`` (its
    metrics land under base/data/metrics)."""
    import torch

    from wm.models.tokenizer import Tokenizer
    from wm.stages import cache_latents

    torch.manual_seed(0)
    tok = Tokenizer(random_block_tokenizer(cfg.tokenizer), cfg.env.height, cfg.env.width)
    save_init_model(cfg.tokenizer.out_dir, tok, cfg)
    cwd = os.getcwd()
    os.chdir(base)
    try:
        return cache_latents.run(cfg)
    finally:
        os.chdir(cwd)
