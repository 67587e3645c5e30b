"""The DVC files' code deps (dvc.yaml and experiments/*/dvc.yaml) follow the imports: every
module of ``wm`` that a stage's command imports (transitively, function-level imports
included) is one of that stage's deps, so an edit to it makes ``dvc status`` report the stage
as changed.

After changing imports, regenerate the code deps of every stage (data deps are kept):
``python tests/test_dvc_deps.py --write``.
"""

import ast
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DVC_FILES = (ROOT / "dvc.yaml", *sorted((ROOT / "experiments").glob("*/dvc.yaml")))
OWNER = {"action-free": "wm.stages.train_dynamics"}  # commands a stage module runs under another name


def stage_module(cmd: str) -> str:
    command = cmd.split()[1]
    return OWNER.get(command, "wm.stages." + command.replace("-", "_"))


def _module_file(name: str) -> Path | None:
    base = ROOT / Path(*name.split("."))
    for cand in (base.with_suffix(".py"), base / "__init__.py"):
        if cand.exists():
            return cand
    return None


def wm_imports(path: Path) -> set[str]:
    """Modules under wm/ or flows/ imported anywhere in ``path`` (module-level or inside functions)."""
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)  # `from wm.stages import shard`
    return {n for n in names if n.split(".")[0] in ("wm", "flows") and _module_file(n) is not None}


def closure(module: str) -> set[Path]:
    seen: set[Path] = set()
    todo = [module]
    while todo:
        path = _module_file(todo.pop())
        if path is None or path in seen:
            continue
        seen.add(path)
        todo.extend(wm_imports(path))
    return {p.relative_to(ROOT) for p in seen if p.name != "__init__.py" or p.stat().st_size > 0}


def test_every_imported_module_is_a_dep():
    missing = {}
    for path in DVC_FILES:
        for name, stage in yaml.safe_load(path.read_text())["stages"].items():
            module = stage_module(stage["cmd"])
            deps = [Path(d) for d in stage.get("deps", [])]
            need = closure(module)
            assert Path(*module.split(".")).with_suffix(".py") in need, name
            gaps = sorted(str(p) for p in need if not any(p == d or d in p.parents for d in deps))
            if gaps:
                missing[f"{path.relative_to(ROOT)}:{name}"] = gaps
    assert not missing, f"dvc.yaml deps miss imported modules: {missing}"


def write_deps(path: Path) -> None:
    """Rewrite each stage's code deps as its import closure, keeping its data deps after them."""
    text = path.read_text()
    stages = yaml.safe_load(text)["stages"]
    lines, out, stage, i = text.split("\n"), [], None, 0
    while i < len(lines):
        line = lines[i]
        if m := re.match(r"^  (\w+):$", line):
            stage = m.group(1)
        out.append(line)
        i += 1
        if line.strip() == "deps:" and stage in stages:
            data = []
            while i < len(lines) and lines[i].startswith("      - "):
                item = lines[i].strip()[2:]
                if not item.startswith(("wm/", "flows/")):
                    data.append(item)
                i += 1
            module = stage_module(stages[stage]["cmd"])
            out += [f"      - {p}" for p in sorted(map(str, closure(module))) + data]
    path.write_text("\n".join(out))


if __name__ == "__main__" and "--write" in sys.argv:
    for dvc_file in DVC_FILES:
        write_deps(dvc_file)
