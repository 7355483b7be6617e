"""Compile a fully-int8 ``.tflite`` for the Coral EdgeTPU with Coral's ``edgetpu_compiler``.

``edgetpu_compiler`` comes from Coral's own apt repository, not from PyPI: :func:`find_compiler`
detects it at run time, and :func:`compile_model` raises :class:`CompilerNotFoundError` (a
:class:`~tfedge.core.errors.ConversionError`) with the install commands when it is absent.
:func:`parse_compiler_output` reads the compiler's report and operation log. What the compiler
will map is predicted before it runs by :func:`tfedge.core.edgetpu.predict_mapping`.

Example:
    >>> from tfedge.converters.edgetpu_compiler import compile_model
    >>> compile_model("model_int8.tflite", "out")["mapped_ops"]  # doctest: +SKIP
    4
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

from tfedge.core.edgetpu import MAPPED_STATUS
from tfedge.core.errors import ConversionError, missing_file

__all__ = [
    "COMPILER_INSTALL_HINT",
    "CompilerNotFoundError",
    "find_compiler",
    "compile_model",
    "parse_compiler_output",
]

COMPILER_INSTALL_HINT = (
    "edgetpu_compiler comes from Coral's apt repository and runs on x86_64 Debian/Ubuntu only:\n"
    "  curl https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo apt-key add -\n"
    '  echo "deb https://packages.cloud.google.com/apt coral-edgetpu-stable main" | '
    "sudo tee /etc/apt/sources.list.d/coral-edgetpu.list\n"
    "  sudo apt-get update && sudo apt-get install edgetpu-compiler\n"
    "(on another OS or CPU, run it in an x86_64 Debian container)."
)


class CompilerNotFoundError(ConversionError):
    """``edgetpu_compiler`` is not installed (the error's ``hint`` says how to install it)."""


def find_compiler() -> str | None:
    """Path of ``edgetpu_compiler`` on ``PATH``, or None when it is not installed.

    Example:
        >>> find_compiler() or "not installed"  # doctest: +SKIP
        '/usr/bin/edgetpu_compiler'
    """
    return shutil.which("edgetpu_compiler")


_ROW = re.compile(r"^\s*(\S+)\s+(\d+)\s+(\S.*?)\s*$")
_HEADER = re.compile(r"^\s*Operator\s+Count\s+Status\s*$")


def _int(pattern: str, text: str):
    m = re.search(pattern, text, re.MULTILINE)
    return int(m.group(1)) if m else None


def _str(pattern: str, text: str):
    m = re.search(pattern, text, re.MULTILINE)
    return m.group(1).strip() if m else None


def parse_compiler_output(text: str) -> dict:
    """Parse what ``edgetpu_compiler -s`` prints, or the ``*_edgetpu.log`` file it writes.

    Args:
        text: the compiler's stdout (with or without the ``-s`` operator table) or its log.

    Returns:
        ``{"compiler_version", "mapped_ops", "cpu_ops", "total_ops", "subgraphs", "ops",
        "output_model", "log_file", "on_chip_memory", "off_chip_memory"}``; ``ops`` is the
        ``Operator / Count / Status`` table as ``[{"op", "count", "status", "mapped"}]`` (an
        operator can appear in several rows, one per status); numbers the text does not give are
        derived from the table where possible, else None.

    Example:
        >>> log = '''Edge TPU Compiler version 16.0.384591198
        ... Input: m.tflite
        ... Output: m_edgetpu.tflite
        ...
        ... Operator                       Count      Status
        ...
        ... CONV_2D                        2          Mapped to Edge TPU
        ... LEAKY_RELU                     1          Operation not supported
        ... '''
        >>> r = parse_compiler_output(log)
        >>> r["mapped_ops"], r["cpu_ops"], r["ops"][1]["op"]
        (2, 1, 'LEAKY_RELU')
    """
    ops, partial = [], False
    in_table = False
    for line in text.splitlines():
        if _HEADER.match(line):
            in_table = True
            continue
        if not in_table:
            continue
        if not line.strip():
            if ops:
                in_table = False
            continue
        m = _ROW.match(line)
        if m and not line.lstrip().startswith("..."):
            status = m.group(3)
            ops.append(
                {
                    "op": m.group(1),
                    "count": int(m.group(2)),
                    "status": status,
                    "mapped": status.startswith(MAPPED_STATUS),
                }
            )
        else:
            partial = partial or "All other operators were mapped" in line
            in_table = False
    mapped = _int(r"Number of operations that will run on Edge TPU:\s*(\d+)", text)
    cpu = _int(r"Number of operations that will run on CPU:\s*(\d+)", text)
    total = _int(r"Total number of operations:\s*(\d+)", text)
    if ops and cpu is None:
        cpu = sum(o["count"] for o in ops if not o["mapped"])
    if mapped is None:
        if ops and not partial:
            mapped = sum(o["count"] for o in ops if o["mapped"])
        elif total is not None:
            mapped = total - (cpu or 0)
            cpu = cpu or 0
    return {
        "compiler_version": _str(r"Edge TPU Compiler version\s+(\S+)", text),
        "mapped_ops": mapped,
        "cpu_ops": cpu,
        "total_ops": total
        if total is not None
        else (mapped + cpu if mapped is not None and cpu is not None else None),
        "subgraphs": _int(r"Number of Edge TPU subgraphs:\s*(\d+)", text),
        "ops": ops,
        "output_model": _str(r"^Output(?: model)?:\s*(.+)$", text),
        "log_file": _str(r"^Operation log:\s*(.+)$", text),
        "on_chip_memory": _str(r"On-chip memory used for caching model parameters:\s*(.+)$", text),
        "off_chip_memory": _str(
            r"Off-chip memory used for streaming uncached model parameters:\s*(.+)$", text
        ),
    }


def _last_error(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if "error" in ln.lower() or "not" in ln.lower():
            return ln
    return lines[-1] if lines else "no output"


def compile_model(
    tflite_path, out_dir, *, timeout: float = 600, compiler: str | None = None
) -> dict:
    """Compile a fully-int8 ``.tflite`` model for the EdgeTPU with ``edgetpu_compiler``.

    Runs ``edgetpu_compiler -s -o OUT_DIR MODEL`` and reads its output and operation log.

    Args:
        tflite_path: the int8 ``.tflite`` model.
        out_dir: directory for ``<name>_edgetpu.tflite`` and ``<name>_edgetpu.log`` (created if
            needed).
        timeout: seconds to wait for the compiler.
        compiler: path of the compiler; default: ``edgetpu_compiler`` on ``PATH``.

    Returns:
        :func:`parse_compiler_output`'s dict plus ``compiled_path`` and ``log_path`` (None when
        the compiler wrote no log) and ``output`` (the compiler's full text). ``ops`` comes from
        the log file when there is one (it always lists every operator).

    Raises:
        CompilerNotFoundError: the compiler is not installed (a ``ConversionError``; its
            ``hint`` holds the install commands). Callers that treat compilation as optional catch
            this one and go on without it.
        ConversionError: the compiler failed on the model or timed out.
        InputFileError: ``tflite_path`` does not exist.

    Example:
        >>> r = compile_model("model_int8.tflite", "out")  # doctest: +SKIP
        >>> r["compiled_path"], r["mapped_ops"], r["cpu_ops"]  # doctest: +SKIP
        ('out/model_int8_edgetpu.tflite', 4, 0)
    """
    exe = compiler or find_compiler()
    if exe is None:
        raise CompilerNotFoundError(
            "edgetpu_compiler is not installed (not found on PATH)", hint=COMPILER_INSTALL_HINT
        )
    path = os.fspath(tflite_path)
    if not os.path.isfile(path):
        raise missing_file("model", path, "check the path to the .tflite file")
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    cmd = [exe, "-s", "-o", out_dir, path]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise ConversionError(
            f"edgetpu_compiler did not finish compiling {path} within {timeout:g} s",
            hint="Pass a longer timeout, or check that the model is fully int8 (tfedge inspect).",
        ) from None
    except OSError as e:
        raise CompilerNotFoundError(
            f"cannot run {exe}: {e.strerror or e}", hint=COMPILER_INSTALL_HINT
        ) from None
    text = (proc.stdout or "") + (proc.stderr or "")
    if proc.returncode != 0:
        raise ConversionError(
            f"edgetpu_compiler failed on {path} (exit status {proc.returncode}): "
            f"{_last_error(text)}",
            hint=f"Check that the model is fully int8 with static shapes: `tfedge inspect {path}`.",
        )
    result = parse_compiler_output(text)
    stem = os.path.splitext(os.path.basename(path))[0]
    compiled = os.path.join(out_dir, f"{stem}_edgetpu.tflite")
    if not os.path.isfile(compiled) and result["output_model"]:
        compiled = os.path.join(out_dir, os.path.basename(result["output_model"]))
    if not os.path.isfile(compiled):
        raise ConversionError(
            f"edgetpu_compiler reported success but wrote no compiled model in {out_dir}",
            hint=f"Its output ended with: {_last_error(text)}",
        )
    log_path = os.path.join(out_dir, f"{stem}_edgetpu.log")
    if os.path.isfile(log_path):
        with open(log_path, encoding="utf-8", errors="replace") as f:
            log = parse_compiler_output(f.read())
        if log["ops"]:
            result["ops"] = log["ops"]
            if result["mapped_ops"] is None:
                result["mapped_ops"], result["cpu_ops"] = log["mapped_ops"], log["cpu_ops"]
    else:
        log_path = None
    result.update(compiled_path=compiled, log_path=log_path, output=text)
    return result
