"""tfedge: take a Keras model to a small, fast, fully-int8 TFLite model and prove it on a device.

Importing ``tfedge`` does not import TensorFlow; the heavy parts load when they are used.

The modules that sat directly in ``tfedge/`` before the folders ``core``, ``devices``,
``reports`` and ``commands`` existed still import at their old paths (``tfedge.streams`` is
``tfedge.core.streams``, the same module object), so code written against them keeps working.

Example:
    >>> import tfedge
    >>> tfedge.__version__
    '0.1.0'
    >>> import tfedge.errors
    >>> tfedge.errors is __import__("tfedge.core.errors").core.errors
    True
"""

import importlib
import importlib.abc
import importlib.util
import sys

from tfedge.version import __version__

__all__ = ["__version__", "analyze", "auto_optimize"]

#: old module path (below ``tfedge.``) -> where it lives now.
MOVED = {
    "analysis": "tfedge.commands.analyze",
    "bench": "tfedge.commands.bench",
    "compare": "tfedge.commands.compare",
    "demo": "tfedge.commands.demo",
    "optimize": "tfedge.commands.optimize",
    "search": "tfedge.commands.auto",
    "stage_worker": "tfedge.commands.stage_worker",
    "backend": "tfedge.core.backend",
    "console": "tfedge.core.console",
    "data": "tfedge.core.data",
    "digits": "tfedge.core.digits",
    "edgetpu": "tfedge.core.edgetpu",
    "errors": "tfedge.core.errors",
    "files": "tfedge.core.files",
    "inspector": "tfedge.core.inspector",
    "keras_internals": "tfedge.core.keras_internals",
    "loading": "tfedge.core.loading",
    "serialization": "tfedge.core.serialization",
    "streams": "tfedge.core.streams",
    "tflite_file": "tfedge.core.tflite_file",
    "yaml_input": "tfedge.core.yaml_input",
    "device": "tfedge.devices.protocol",
    "fleet": "tfedge.devices.fleet",
    "runner": "tfedge.devices.runner",
    "ssh": "tfedge.devices.ssh",
    "compression_report": "tfedge.reports.compression",
    "plots": "tfedge.reports.plots",
    "report": "tfedge.reports.page",
}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Answers ``import tfedge.<old>`` with the module at its new path (no second copy)."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname.startswith("tfedge.") and fullname[7:] in MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        module = importlib.import_module(MOVED[spec.name[7:]])
        spec.loader_state = module.__spec__
        return module

    def exec_module(self, module):
        # The import system stamped the alias's spec on the module; give it back its own.
        module.__spec__ = module.__spec__.loader_state


if not any(isinstance(finder, _MovedModules) for finder in sys.meta_path):
    sys.meta_path.append(_MovedModules())


def __getattr__(name):
    # Lazy: ``import tfedge`` must not import TensorFlow.
    if name == "analyze":
        from tfedge.commands.analyze import analyze

        return analyze
    if name == "auto_optimize":
        from tfedge.commands.auto import auto_optimize

        return auto_optimize
    if name in MOVED:
        return importlib.import_module(f"tfedge.{name}")
    raise AttributeError(f"module 'tfedge' has no attribute {name!r}")
