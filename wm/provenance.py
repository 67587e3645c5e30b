"""Where an artifact came from: the code version recorded in manifests and checkpoints."""

from __future__ import annotations

import subprocess
from pathlib import Path

import wm


def code_version() -> dict[str, object]:
    """Package version plus git commit (and whether the tree had changes), when in a repo."""
    root = Path(wm.__file__).resolve().parent.parent
    info: dict[str, object] = {"wm": wm.__version__, "git_commit": None, "git_dirty": None}
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        if commit.returncode == 0:
            info["git_commit"] = commit.stdout.strip()
            status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                    capture_output=True, text=True, timeout=10)
            info["git_dirty"] = bool(status.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return info
