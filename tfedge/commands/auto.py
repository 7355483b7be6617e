"""``tfedge optimize --auto``: the accuracy-aware search, measured for real, and its outputs.

:func:`tfedge.models.search.run_search` is the search (Optuna);
:class:`tfedge.commands.evaluator.RecipeEvaluator` gives it the measurement (the stages run as
``tfedge optimize`` runs them, converted to fully-int8 TFLite and benched with LiteRT, on this
machine or on an ssh device), and :func:`tfedge.reports.search.write_outputs` writes what it found.

:func:`auto_optimize` ties them together and leaves ``DIR/model.tflite`` (the best on the objective
within the tolerance, confirmed on held-back validation data), ``DIR/model.keras``,
``DIR/report.json``, ``DIR/report.html`` and ``DIR/recipe.yaml``.
The study is kept in ``DIR/search.db`` (SQLite) unless ``storage`` names a shared database.

The validation data is split (seeded, stratified by label) into a *search* part, which the
fine-tunes' best-epoch choice and every candidate's measured accuracy use, and a *confirmation*
part that no training or search decision sees. The search picks among many candidates on the
search part, so the winner's accuracy there is optimistic; the final choice is the best
candidate whose int8 model also keeps the tolerance on the confirmation part
(:func:`tfedge.models.search.confirm_best`), else post-training int8.

Example:
    >>> result = auto_optimize("model.keras", "train.npz", "val.npz", out_dir="out",
    ...                        tolerance=0.01, objective="size", budget_minutes=15)  # doctest: +SKIP
    >>> result.best["label"]  # doctest: +SKIP
    'prune(0.8) + cluster(16) + qat'
"""

from pathlib import Path

from tfedge.commands.evaluator import (
    CONFIRM_FRACTION,
    MIN_SPLIT_SAMPLES,
    RecipeEvaluator,
    fingerprint,
    split_confirmation,
)
from tfedge.core.console import echo
from tfedge.core.errors import OptimizationError
from tfedge.models.search import (
    check_settings,
    open_storage,
    recipe_label,
    run_search,
    screen_for,
)
from tfedge.reports.search import tolerance_text, write_outputs

__all__ = [
    "RecipeEvaluator",
    "auto_optimize",
    "write_outputs",
    "fingerprint",
    "split_confirmation",
    "MIN_SPLIT_SAMPLES",
]


def _edgetpu_note(figures: dict) -> str:
    """``, EdgeTPU: yes`` / ``, not for the EdgeTPU (int16 ...)`` where the row says."""
    if figures.get("edgetpu_compatible") is None:
        return ""
    if figures["edgetpu_compatible"]:
        return ", EdgeTPU: yes"
    why = f" (int16 {', '.join(figures['int16_layers'])})" if figures.get("int16_layers") else ""
    return f", EdgeTPU: no{why}"


def _echo_result(result) -> None:
    echo(
        f"search: {len(result.candidates)} candidates in study {result.study_name!r} "
        f"({result.stopped}); Pareto set: {len(result.pareto)}"
    )
    for candidate in result.pareto:
        figures = candidate["figures"]
        p50 = (figures.get("latency_ms") or {}).get("p50")
        echo(
            f"  {'*' if candidate is result.best else ' '} trial {candidate['trial']}: "
            f"{recipe_label(candidate['recipe'])}: int8 {figures['accuracy'] * 100:.2f}%, "
            f"{figures['size_gzip_bytes']:,} B gzip, p50 {p50:.3f} ms" + _edgetpu_note(figures)
        )
    summary = result.extra.get("confirmation")
    if not summary or summary.get("reference_accuracy") is None:
        return
    samples = summary.get("samples")
    echo(
        f"confirmation on {samples or 'the'} held-back validation samples (float32 "
        f"{summary['reference_accuracy'] * 100:.2f}%; the loss plus "
        f"{summary.get('margin', 0):g} standard error must be within the tolerance):"
    )
    for candidate in result.candidates:
        if candidate.get("confirm_error"):
            echo(
                f"  trial {candidate['trial']}: {recipe_label(candidate['recipe'])}: "
                f"cannot be measured on them ({candidate['confirm_error']}) - rejected"
            )
        if "confirm_accuracy" not in candidate:
            continue
        verdict = "kept" if candidate["confirmed"] else "rejected"
        bound = candidate.get("confirm_loss")
        echo(
            f"  trial {candidate['trial']}: {recipe_label(candidate['recipe'])}: "
            f"int8 {candidate['confirm_accuracy'] * 100:.2f}%"
            + ("" if bound is None else f", loss + margin {bound * 100:.2f} points")
            + f" - {verdict}"
        )
    if summary["fallback"]:
        echo(
            "no candidate within the tolerance kept it on the held-back samples: "
            "falling back to post-training int8"
        )


def auto_optimize(
    model,
    train,
    val,
    *,
    out_dir,
    tolerance: float = 0.01,
    objective: str = "size",
    device: str = "local",
    ssh_config=None,
    budget_minutes: float | None = None,
    max_trials: int | None = None,
    storage: str | None = None,
    study_name: str | None = None,
    resume: bool = False,
    epochs: int | None = None,
    strategy=None,
    target=None,
    runs: int = 100,
    evaluator=None,
    seed: int | None = 0,
    confirm_fraction: float = CONFIRM_FRACTION,
    fidelity: str = "full",
):
    """Search for the smallest / fastest / best balanced fully-int8 model within ``tolerance``.

    :func:`tfedge.models.search.run_search` with :class:`RecipeEvaluator` as its measurement, and the
    outputs written to ``out_dir`` (:func:`write_outputs`).

    Args:
        model: a ``.keras``/``.h5`` path (Keras 2 or 3), a LoadedModel or a tf_keras model.
        train: labelled training data.
        val: labelled validation data (accuracy, and the tolerance, are measured on it). A
            seeded, stratified ``confirm_fraction`` of it is kept back: the search never sees it,
            and the chosen model must keep the tolerance on it too.
        out_dir: the output folder; it also keeps the study (``search.db``) and the caches.
        tolerance: the accuracy the result may lose against the float32 model, in (0, 1).
        objective: ``"size"``, ``"latency"`` or ``"balanced"``.
        device: where to measure latency (``"local"`` or an ``ssh://`` URL).
        ssh_config: an ssh config file for ssh devices.
        budget_minutes: stop starting candidates after this long; the best so far is returned.
        max_trials: stop once the study holds this many finished trials.
        storage: an Optuna storage URL shared by several workers (default ``DIR/search.db``).
        study_name: the study's name (default ``auto-<objective>``).
        resume: require an existing study to continue.
        epochs: fine-tuning epochs for every stage (None: each stage's default).
        strategy: a ``tf.distribute`` strategy (or ``"mirrored"``) for the fine-tunes.
        target: a converter target profile.
        runs: timed runs per candidate on the device.
        evaluator: replace the measurement (an ``evaluator(recipe) -> figures``).
        seed: the sampler's seed.
        confirm_fraction: the part of ``val`` kept back to confirm the choice (0: none).
        fidelity: ``"full"`` fine-tunes every candidate fully; ``"multi"`` screens each
            candidate first (1 epoch on a seeded 25 % of ``train``, at least 1,024 samples)
            and gives the full fine-tune only to those Optuna's successive-halving pruner
            promotes (the report's ``fidelity`` column says which).

    Returns:
        The :class:`tfedge.models.search.SearchResult`.

    Raises:
        OptimizationError: bad settings, an unreachable device, a storage that cannot be opened,
            a study of another model, or no candidate within the tolerance (the report is written
            first).

    Example:
        >>> result = tfedge.auto_optimize("model.keras", "train.npz", "val.npz", out_dir="out",
        ...                               tolerance=0.01, objective="size")  # doctest: +SKIP
    """
    check_settings(tolerance, objective, budget_minutes, max_trials)
    if fidelity not in ("full", "multi"):
        raise OptimizationError(
            f"fidelity {fidelity!r} is unknown; expected 'full' or 'multi'",
            "use fidelity='multi' to screen candidates briefly before the full fine-tune",
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    url = storage or f"sqlite:///{(out / 'search.db').resolve()}"
    open_storage(url)  # a bad URL or a server that is down fails before any training
    measure = evaluator or RecipeEvaluator(
        model,
        train,
        val,
        out_dir=out,
        device=device,
        ssh_config=ssh_config,
        target=target,
        strategy=strategy,
        runs=runs,
        confirm_fraction=confirm_fraction,
    )
    confirm = measure.confirm_correct if getattr(measure, "confirm", None) is not None else None
    name = study_name or f"auto-{objective}"
    echo(
        f"search: objective {objective}, tolerance {tolerance_text(tolerance)}, device {device}, "
        f"study {name!r}" + (f", budget {budget_minutes:g} min" if budget_minutes else "")
    )
    try:
        result = run_search(
            getattr(measure, "base", model),
            train,
            val,
            evaluator=measure,
            tolerance=tolerance,
            objective=objective,
            budget_minutes=budget_minutes,
            max_trials=max_trials,
            storage=url,
            study_name=name,
            resume=resume,
            fingerprint=getattr(measure, "fingerprint", None),
            epochs=epochs,
            seed=seed,
            on_progress=echo,
            confirm=confirm,
            fidelity=screen_for(getattr(measure, "train", None)) if fidelity == "multi" else None,
        )
        write_outputs(result, out, measure)
    finally:
        if evaluator is None:
            measure.close()
    _echo_result(result)
    if result.best is None:
        raise OptimizationError(
            f"no candidate kept the tolerance of {tolerance_text(tolerance)} below the float "
            f"model's {result.reference_accuracy * 100:.2f}% ({len(result.candidates)} tried); "
            f"see {out / 'report.json'}",
            "allow a larger --tolerance, more --budget-minutes, or more --epochs",
        )
    return result
