"""The layers run one way: core <- models <- converters <- application, with no import loop.

Every ``import`` and ``from … import`` in every module is read from the source (also those inside
functions), resolved the way Python resolves it (``tfedge.models.X`` is ``models/X.py``,
``tfedge.converters.X`` is ``converters/X.py``; ``from package import name`` is the submodule
when one has that name), and checked against the layer table below, which the README's layout
table repeats.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = {"tfedge": "tfedge", "tfedge.models": "models", "tfedge.converters": "converters"}

# Core modules of tfedge/; every other module there is application. models/ and converters/
# are layers of their own.
CORE = {
    "tfedge.backend",
    "tfedge.console",
    "tfedge.data",
    "tfedge.digits",
    "tfedge.edgetpu",
    "tfedge.errors",
    "tfedge.files",
    "tfedge.keras_internals",
    "tfedge.yaml_input",
    "tfedge.inspector",
    "tfedge.loading",
    "tfedge.runner",
    "tfedge.serialization",
    "tfedge.streams",
    "tfedge.tflite_file",
    "tfedge.version",
}
RANK = {"core": 0, "models": 1, "converters": 2, "application": 3}


def _modules() -> dict[str, Path]:
    modules = {}
    for package, folder in FOLDERS.items():
        for path in sorted((ROOT / folder).glob("*.py")):
            name = package if path.stem == "__init__" else f"{package}.{path.stem}"
            modules[name] = path
    return modules


MODULES = _modules()


def layer(module: str) -> str:
    if module.startswith("tfedge.models"):
        return "models"
    if module.startswith("tfedge.converters"):
        return "converters"
    return "core" if module in CORE else "application"


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


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_imports_a_higher_layer(module):
    upward = sorted(t for t in GRAPH[module] if RANK[layer(t)] > RANK[layer(module)])
    assert not upward, f"{module} ({layer(module)}) imports higher layers: {upward}"


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


def test_core_modules_exist():
    assert CORE <= set(MODULES), f"CORE names missing modules: {sorted(CORE - set(MODULES))}"


def test_the_device_runner_imports_nothing_of_the_project():
    assert GRAPH["tfedge.runner"] == set()
