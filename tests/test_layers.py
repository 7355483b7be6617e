"""The layers are folders and run one way, with no import loop.

core (``tfedge/core``) <- models (``models/``) <- converters (``converters/``) <- devices
(``tfedge/devices``) and reports (``tfedge/reports``), which do not import each other <-
application (``tfedge/commands``, ``tfedge/cli/``, ``tfedge/__main__.py``, ``tfedge/__init__.py``).

Every ``import`` and ``from … import`` in every module, package ``__init__`` files and sub-folders
included, is read from the source (also those inside functions), resolved the way Python
resolves it (``tfedge.models.X`` is ``models/X.py``, ``tfedge.converters.X`` is
``converters/X.py``; ``from package import name`` is the submodule when one has that name), and
checked against the layer table below, which the README's Layout section repeats.
"""

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = {"tfedge": "tfedge", "tfedge.models": "models", "tfedge.converters": "converters"}

# (module prefix, layer); the first match wins.
LAYERS = [
    ("tfedge.version", "core"),
    ("tfedge.core", "core"),
    ("tfedge.models", "models"),
    ("tfedge.converters", "converters"),
    ("tfedge.devices", "devices"),
    ("tfedge.reports", "reports"),
    ("tfedge", "application"),
]
RANK = {"core": 0, "models": 1, "converters": 2, "devices": 3, "reports": 3, "application": 4}
# What may sit directly in tfedge/ beside the layer folders.
TOP = {"tfedge", "tfedge.__main__", "tfedge.version"}


def _modules() -> dict[str, Path]:
    modules = {}
    for package, folder in FOLDERS.items():
        base = ROOT / folder
        for path in sorted(base.rglob("*.py")):
            parts = list(path.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join([package, *parts])] = path
    return modules


MODULES = _modules()


def layer(module: str) -> str:
    for prefix, name in LAYERS:
        if module == prefix or module.startswith(prefix + "."):
            return name
    raise AssertionError(f"{module} is in no layer")


def imports_of(module: str) -> set[str]:
    """The project modules that ``module`` imports, anywhere in its source."""
    path = MODULES[module]
    package = module if path.stem == "__init__" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            targets = [
                f"{source}.{alias.name}" if f"{source}.{alias.name}" in MODULES else source
                for alias in node.names
            ]
        else:
            continue
        found.update(t for t in targets if t in MODULES and t != module)
    return found


GRAPH = {module: imports_of(module) for module in MODULES}


def test_every_module_is_found_in_the_folders():
    for name in ("tfedge.core", "tfedge.devices.runner", "tfedge.reports", "tfedge.commands.auto"):
        assert name in MODULES
    assert "tfedge.models" in MODULES and "tfedge.converters.tflite" in MODULES


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_imports_a_higher_or_sibling_layer(module):
    own = layer(module)
    wrong = sorted(
        t
        for t in GRAPH[module]
        if RANK[layer(t)] > RANK[own] or (RANK[layer(t)] == RANK[own] and layer(t) != own)
    )
    assert not wrong, f"{module} ({own}) imports higher or sibling layers: {wrong}"


def test_no_import_loops():
    loops, state = [], {}

    def visit(module, stack):
        state[module] = "open"
        for target in sorted(GRAPH[module]):
            if state.get(target) == "open":
                loops.append(stack[stack.index(target) :] + [target])
            elif target not in state:
                visit(target, stack + [target])
        state[module] = "done"

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [module])
    assert not loops, "import loops: " + "; ".join(" -> ".join(loop) for loop in loops)


def test_tfedge_top_holds_only_the_entry_points():
    top = {m for m, path in MODULES.items() if path.parent == ROOT / "tfedge"}
    loose = sorted(top - TOP)
    assert not loose, f"modules directly in tfedge/ outside a layer folder: {loose}"


def test_the_device_runner_imports_nothing_of_the_project():
    # It is copied alone to the device and run there with only numpy and a LiteRT interpreter.
    assert GRAPH["tfedge.devices.runner"] == set()


def test_no_module_imports_the_package_it_sits_in():
    # A package's __init__ imports its modules; a module importing its own package back (``from
    # tfedge.converters import convert`` inside converters/) is the loop through the __init__.
    back = sorted(
        f"{module} -> {target}"
        for module, targets in GRAPH.items()
        for target in targets
        if MODULES[target].stem == "__init__" and module.startswith(target + ".")
    )
    assert not back, f"modules importing their own package: {back}"


@pytest.mark.parametrize("old", sorted(importlib.import_module("tfedge").MOVED))
def test_an_old_module_path_is_the_moved_module(old):
    import tfedge

    moved = importlib.import_module(f"tfedge.{old}")
    assert moved is importlib.import_module(tfedge.MOVED[old])
    assert moved.__spec__.name == tfedge.MOVED[old]


def test_no_package_name_is_both_a_module_and_something_else():
    # ``from tfedge.models.wrapping import callbacks`` in models/__init__.py beside a module
    # a module models/callbacks.py: whichever binds last wins, and `import tfedge.models.callbacks as m`
    # can hand back the function.
    clashes = []
    for package, path in MODULES.items():
        if path.stem != "__init__":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module:
                for alias in node.names:
                    name = alias.asname or alias.name
                    if f"{package}.{name}" in MODULES and node.module != package:
                        if f"{node.module}.{alias.name}" != f"{package}.{name}":
                            clashes.append(f"{package}.{name}")
            elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                if f"{package}.{node.name}" in MODULES:
                    clashes.append(f"{package}.{node.name}")
    assert not clashes, f"names that are a module and another object at once: {clashes}"
