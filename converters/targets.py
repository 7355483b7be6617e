"""Target profiles: what a device needs from a model (mode, I/O type, operators, shapes).

A profile is a small YAML file; the built-in ones live in ``converters/targets/`` (``edgetpu``,
``arm``) and ``--target FILE.yaml`` takes a user's own. Keys: ``name``, ``description``, ``mode``,
``io`` (the default I/O type), ``allowed_io``, ``supported_ops`` (a list of TFLite builtin names;
any other operator is refused), ``edgetpu`` (apply the EdgeTPU rules of :mod:`tfedge.core.edgetpu`:
supported operators, static shapes, at most 3 non-1 dimensions per tensor) and ``compile`` (run ``edgetpu_compiler`` after conversion when present).

Example:
    >>> profile = load_target("edgetpu")
    >>> profile.resolve(None, None)
    ('int8', 'uint8')
"""

# TensorFlow, and the tfedge modules that import it, load inside the functions that use them:
# `tfedge --help` and `tfedge inspect` import this module (0.15 s, against 4.5 s with TensorFlow).
from dataclasses import dataclass, field
from pathlib import Path

from tfedge.converters.modes import MODES
from tfedge.core.errors import ConversionError
from tfedge.core.yaml_input import read_yaml

__all__ = ["Target", "load_target", "builtin_targets"]

_DIR = Path(__file__).resolve().parent / "targets"


def builtin_targets() -> list[str]:
    """Names of the profiles shipped with tfedge."""
    return sorted(p.stem for p in _DIR.glob("*.yaml"))


@dataclass
class Target:
    """A device's requirements for a converted model (see the module docstring for the keys)."""

    name: str
    description: str = ""
    mode: str = "int8"
    io: str | None = None
    allowed_io: list = field(default_factory=list)
    supported_ops: list | None = None
    edgetpu: bool = False
    compile: bool = False

    def resolve(self, mode, io):
        """The mode and I/O type to convert with: the profile's, unless compatible ones are given."""
        if mode not in (None, self.mode):
            raise ConversionError(
                f"mode {mode} does not fit target {self.name}, which needs mode {self.mode}",
                f"leave the mode out with target {self.name}",
                option="mode",
            )
        io = io or self.io
        if self.allowed_io and io not in self.allowed_io:
            raise ConversionError(
                f"input/output type {io} does not fit target {self.name}; expected one of "
                f"{', '.join(self.allowed_io)}",
                f"leave the input/output type out (default {self.io})",
                option="io",
            )
        return self.mode, io

    def check(self, blob: bytes, info: dict | None = None) -> dict:
        """Refuse a converted model the target cannot run; return the inspection (with EdgeTPU mapping).

        ``info`` is the model's :func:`tfedge.core.inspector.inspect_model` when the caller has it.
        """
        from tfedge.core.inspector import inspect_model

        info = info if info is not None else inspect_model(blob)
        problems = []
        if self.supported_ops is not None:
            extra = sorted(set(info["ops"]) - set(self.supported_ops))
            if extra:
                problems.append(f"operators it does not support: {', '.join(extra)}")
        if self.edgetpu:
            mapping = info.get("edgetpu") or {}
            if not mapping.get("compatible", False):
                problems.append(
                    "; ".join(str(u) for u in mapping.get("unsupported", [])) or "not compatible"
                )
        if problems:
            raise ConversionError(
                f"the model does not fit target {self.name}: {'; '.join(problems)}",
                "replace those layers, or convert without the target to run them on the CPU",
                option="target",
            )
        return info


def load_target(target) -> Target:
    """Load a profile by built-in name or from a YAML file.

    Raises:
        ConversionError: unknown name, unreadable file or unknown keys.
    """
    if isinstance(target, Target):
        return target
    path = Path(str(target))
    if not path.suffix and (_DIR / f"{target}.yaml").is_file():
        path = _DIR / f"{target}.yaml"
    if not path.is_file():
        raise ConversionError(
            f"unknown target {target!r}",
            f"use one of {', '.join(builtin_targets())} or a profile YAML file",
        )
    hint = "pass a profile YAML file (keys: " + ", ".join(sorted(_TYPES)) + ")"
    data = read_yaml(path, "target profile", ConversionError, hint) or {}
    if not isinstance(data, dict):
        raise ConversionError(f"target profile {path} must be a YAML mapping of keys to values")
    unknown = sorted(str(key)[:40] for key in set(data) - set(_TYPES))
    if unknown:
        raise ConversionError(
            f"target profile {path} has unknown keys {unknown[:10]}",
            f"known keys: {', '.join(sorted(_TYPES))}",
        )
    for key, value in data.items():
        kinds, wording = _TYPES[key]
        if not isinstance(value, kinds) or (
            isinstance(value, list) and not all(isinstance(v, str) for v in value)
        ):
            raise ConversionError(
                f"target profile {path}: {key} is {str(value)[:60]!r}; expected {wording}",
                f"fix {key} in {path}",
            )
    if data.get("mode", "int8") not in MODES:
        raise ConversionError(
            f"target profile {path}: mode {data['mode']!r} is not one of {', '.join(MODES)}",
            f"fix mode in {path}",
        )
    for io in [data.get("io")] + list(data.get("allowed_io") or []):
        if io is not None and io not in _IO:
            raise ConversionError(
                f"target profile {path}: input/output type {io!r} is not one of {', '.join(_IO)}",
                f"fix io / allowed_io in {path}",
            )
    data.setdefault("name", path.stem)
    return Target(**data)


# What each profile key holds (a YAML file is checked against it before use).
_TYPES = {
    "name": (str, "a name"),
    "description": (str, "a text"),
    "mode": (str, "a convert mode"),
    "io": ((str, type(None)), "an input/output type"),
    "allowed_io": (list, "a list of input/output types"),
    "supported_ops": ((list, type(None)), "a list of TFLite operator names"),
    "edgetpu": (bool, "true or false"),
    "compile": (bool, "true or false"),
}
_IO = ("int8", "uint8", "float32", "int16")
