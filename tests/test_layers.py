"""Import layers: every import inside the project points down (or sideways within one package),
never up; stages do not import each other; no private name crosses a module boundary.

Layers, lowest first (a module may import its own layer's package and anything below):
    0  wm, wm.errors, wm.config, wm.atomic, wm.provenance, wm.timing, wm.metrics, wm.stats, wm.probes
    1  wm.data            2  wm.models          3  wm.objectives     4  wm.training
    5  wm.world_model     6  wm.envs            7  wm.stages (no stage imports another)
    8  wm.bench, wm.retrain                     9  wm.inspect        10 wm.play (the browser play page)
    11 wm.cli, flows
Function-level imports count: a lazy import is still a dependency.
"""

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

LAYERS = {
    "wm": 0, "wm.config": 0, "wm.atomic": 0, "wm.provenance": 0, "wm.timing": 0, "wm.metrics": 0,
    "wm.stats": 0, "wm.probes": 0, "wm.errors": 0,
    "wm.data": 1, "wm.models": 2, "wm.objectives": 3, "wm.training": 4, "wm.world_model": 5, "wm.envs": 6,
    "wm.stages": 7, "wm.bench": 8, "wm.retrain": 8, "wm.inspect": 9, "wm.play": 10, "wm.cli": 11,
    "flows": 11,
}


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def group(module: str) -> str:
    """The longest LAYERS key that is ``module`` or a package above it."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in LAYERS:
            return ".".join(parts[:n])
    raise AssertionError(f"{module} has no layer: add it to LAYERS in tests/test_layers.py")


def project_files() -> list[Path]:
    return sorted([*(ROOT / "wm").rglob("*.py"), *(ROOT / "flows").rglob("*.py")])


def imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, module, imported names) of every absolute import of wm/flows in ``path``."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name, []) for a in node.names if a.name.split(".")[0] in ("wm", "flows")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                and node.module.split(".")[0] in ("wm", "flows"):
            out.append((node.lineno, node.module, [a.name for a in node.names]))
    return out


def violations() -> list[str]:
    found = []
    for path in project_files():
        src = module_name(path)
        g_src = group(src)
        for line, target, names in imports(path):
            where = f"{path.relative_to(ROOT)}:{line} imports {target}"
            # `from wm.stages import shard` imports a module: judge the module, not the package
            modules = [f"{target}.{n}" for n in names if (ROOT / Path(*f"{target}.{n}".split("."))).with_suffix(".py")
                       .exists()] or [target]
            for mod in modules:
                g_dst = group(mod)
                if LAYERS[g_dst] > LAYERS[g_src]:
                    found.append(f"{where}: layer {LAYERS[g_dst]} ({g_dst}) above {LAYERS[g_src]} ({g_src})")
                elif LAYERS[g_dst] == LAYERS[g_src] and g_dst != g_src and LAYERS[g_src] > 0 and \
                        {g_src, g_dst} != {"wm.cli", "flows"}:
                    found.append(f"{where}: sideways between {g_src} and {g_dst}")
                if g_src == g_dst == "wm.stages" and mod != src:
                    found.append(f"{where}: a stage imports another stage")
                if g_dst == "flows" and src.startswith("wm"):
                    found.append(f"{where}: wm imports the orchestration layer")
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private and target != src:
                found.append(f"{where}: private names {private} cross a module boundary")
    return found


def test_imports_follow_the_layers():
    assert violations() == []


def test_the_checker_sees_an_upward_import(monkeypatch):
    """The test can fail: an envs module that imports a stage is reported."""
    fake = ROOT / "wm" / "envs" / "_layer_probe.py"
    here = sys.modules[__name__]
    monkeypatch.setattr(here, "project_files", lambda: [fake])
    monkeypatch.setattr(here, "imports",
                        lambda path: [(3, "wm.stages.collect", ["run"]), (4, "wm.data.shards", ["_secret"])])
    found = violations()
    assert len(found) == 2
    assert "layer 7 (wm.stages) above 6 (wm.envs)" in found[0] and "private names ['_secret']" in found[1]
