"""What ``tfedge optimize --auto`` leaves in its folder: the chosen model, the reports and the recipe.

:func:`write_outputs` writes ``DIR/model.tflite`` (the best on the objective within the
tolerance), ``DIR/model.keras``, ``DIR/report.json`` (every candidate, in optimize's schema plus
``trial``, ``recipe``, ``state``, ``pareto``, ``within_tolerance``, ``chosen``, and a ``search``
summary), ``DIR/report.html`` (candidates table and Pareto plot) and ``DIR/recipe.yaml``.

Example:
    >>> write_outputs(result, "out", evaluator)["search"]["best_trial"]  # doctest: +SKIP
    4
"""

import json
import shutil
from pathlib import Path

import yaml

from tfedge.core.console import echo
from tfedge.core.files import write_atomically
from tfedge.models.recipe import validate_recipe
from tfedge.reports.page import write_html
from tfedge.version import __version__

__all__ = ["write_outputs", "tolerance_text"]


def tolerance_text(tolerance: float) -> str:
    """A tolerance in points of accuracy.

    Example:
        >>> tolerance_text(0.01)
        '1 point'
    """
    points = round(tolerance * 100, 4)
    return f"{points:g} point" + ("" if points == 1 else "s")


def _row(candidate: dict, chosen: bool) -> dict:
    figures = dict(candidate.get("figures") or {})
    row = figures or {"model": None}
    row.update(
        {
            "stage": candidate.get("label"),
            "trial": candidate["trial"],
            "state": candidate["state"],
            "recipe": candidate["recipe"],
            "within_tolerance": candidate["within_tolerance"],
            "pareto": candidate["pareto"],
            "chosen": chosen,
            "seconds": candidate.get("seconds"),
            "worker": candidate.get("worker"),
            "fidelity": candidate.get("fidelity") or "full",
        }
    )
    screen = candidate.get("screen_figures") or {}
    if screen.get("accuracy") is not None:
        row["screen_accuracy"] = screen["accuracy"]
        row["screen_size_gzip_bytes"] = screen.get("size_gzip_bytes")
    if candidate.get("error"):
        row["error"] = candidate["error"]
        if candidate.get("hint"):
            row["hint"] = candidate["hint"]
    if candidate.get("pruned"):
        row["pruned"] = candidate["pruned"]
    if candidate.get("confirm_error"):
        row["confirm_error"] = candidate["confirm_error"]
        row["confirmed"] = False
    if "confirm_accuracy" in candidate:
        row["confirm_accuracy"] = candidate["confirm_accuracy"]
        row["confirm_loss"] = candidate.get("confirm_loss")
        row["confirmed"] = candidate["confirmed"]
    row.setdefault("keras_accuracy", None)
    return row


def write_outputs(result, out_dir, evaluator=None) -> dict:
    """Write ``model.tflite``, ``model.keras``, ``report.json``, ``report.html`` and ``recipe.yaml``.

    A best candidate measured on another worker (its files are not here) is measured again here
    with ``evaluator`` to get its model.

    Returns:
        The report dict written to ``report.json``.

    Example:
        >>> write_outputs(result, "out", evaluator)  # doctest: +SKIP
    """

    out = Path(out_dir)
    best = result.best
    reference = dict(result.reference)
    reference.update(
        {"stage": "float32", "trial": None, "state": "reference", "recipe": None, "chosen": False}
    )
    confirmation = result.extra.get("confirmation") or {}
    if confirmation.get("reference_accuracy") is not None:
        reference["confirm_accuracy"] = confirmation["reference_accuracy"]
    rows = [reference] + [_row(c, c is best) for c in result.candidates]
    if best is not None:
        figures = best["figures"]
        tflite = Path(str(figures.get("model") or ""))
        keras_path = Path(str(figures.get("keras_model") or ""))
        if not tflite.is_file() and evaluator is not None:
            echo(f"trial {best['trial']} ran on {best.get('worker')}: measuring it again here")
            again = evaluator(best["recipe"])
            tflite, keras_path = Path(again["model"]), Path(again.get("keras_model") or "")
        if tflite.is_file():
            shutil.copyfile(tflite, out / "model.tflite")
        if keras_path.is_file() and keras_path.suffix in (".keras", ".h5"):
            shutil.copyfile(keras_path, out / f"model{keras_path.suffix}")
        recipe = {
            "model": Path(str(getattr(evaluator, "source", "") or "")).name or None,
            "stages": best["recipe"]["stages"],
            "convert": {"mode": "int8", **(best["recipe"].get("convert") or {})},
        }
        validate_recipe(recipe, "the recipe found")  # what --recipe will read back
        header = (
            f"# Found by `tfedge optimize --auto --objective {result.objective} --tolerance "
            f"{result.tolerance:g}` (trial {best['trial']} of study {result.study_name!r}):\n"
            f"# int8 accuracy {figures['accuracy'] * 100:.2f}% on the validation data the search "
            f"used (float32 {result.reference_accuracy * 100:.2f}%)"
            + (
                f", {best['confirm_accuracy'] * 100:.2f}% on the held-back part (float32 "
                f"{confirmation['reference_accuracy'] * 100:.2f}%)"
                if "confirm_accuracy" in best
                else ""
            )
            + f", {figures['size_gzip_bytes']:,} "
            f"bytes gzipped, p50 {(figures.get('latency_ms') or {}).get('p50')} ms.\n"
            "# Reproduce: tfedge optimize MODEL --train DATA --val DATA --recipe recipe.yaml -o DIR\n"
        )
        text = header + yaml.safe_dump(recipe, sort_keys=False)
        write_atomically(out / "recipe.yaml", text)
    payload = {"tfedge_version": __version__, "results": rows, "search": result.to_dict()}
    write_atomically(out / "report.json", json.dumps(payload, indent=2, default=str) + "\n")
    _write_html(out / "report.html", rows, result)
    return payload


def _write_html(path: Path, rows, result) -> None:
    """The report page (candidates table, Pareto fronts of accuracy vs size and vs p50)."""

    reference_device = rows[0].get("device")
    shown = []
    for row in rows:
        if row.get("accuracy") is None:  # pruned or failed: a table row, no point on the plots
            row = dict(row)
            row["model"] = ""
            row["device"] = reference_device
            if row.get("pruned") and not row.get("error"):
                row["error"] = f"pruned: {row['pruned']}"
        if row.get("confirm_accuracy") is not None:
            row = dict(row)
            verdict = (
                "reference"
                if row.get("state") == "reference"
                else "confirmed"
                if row.get("confirmed")
                else "rejected on confirmation"
            )
            row["stage"] = (
                f"{row['stage']} [{verdict}: {row['confirm_accuracy'] * 100:.2f}% held back]"
            )
        shown.append(row)
    title = (
        f"tfedge optimize --auto: {result.objective}, tolerance {tolerance_text(result.tolerance)}"
    )
    confirmation = result.extra.get("confirmation") or {}
    if confirmation.get("fallback"):
        title += " (no candidate confirmed: post-training int8)"
    write_html(path, shown, title=title)
