"""``tfedge optimize``: a model through compression stages, each converted to int8 and benched.

A run is a list of stages (from flags or a YAML recipe) applied in order to the float model, each
fine-tuned (distilling from the original float model by default), saved as a checkpoint, and
converted to fully-int8 TFLite. The float baseline (float32 and post-training int8) and every stage
are then benched together in one run, on this machine or on ``--device``. Outputs in ``DIR``:
``model.keras`` (the final optimized float model), ``model.tflite`` (its int8 conversion),
``report.json`` (one result per stage, with ``stage`` and ``keras_accuracy``) and ``report.html``.

An interrupted run resumes: stages whose checkpoint exists under ``DIR/checkpoints`` with the same
settings are loaded instead of trained again.

Example:
    >>> report = optimize("model.keras", "train.npz", "val.npz", stages=stages_from_flags(prune=0.8, qat=True),
    ...                   out_dir="out")  # doctest: +SKIP
"""

import hashlib
import json
import time
from pathlib import Path

import numpy as np

import tfedge.models.stages as registry
from tfedge.commands.bench import bench, format_results, write_results
from tfedge.converters import convert, input_shape_of
from tfedge.core.console import echo
from tfedge.core.errors import OptimizationError
from tfedge.core.files import write_atomically
from tfedge.core.loading import LoadedModel, load_model
from tfedge.core.streams import DataStream, stream_data
from tfedge.devices.runner import DEFAULT_RUNS
from tfedge.models.cloning import frozen_copy
from tfedge.models.rebuild import to_keras2
from tfedge.models.recipe import STAGES, load_recipe
from tfedge.models.stages import code_key, run_stage, save_atomically
from tfedge.models.training import num_classes, outputs_probabilities, predicted_labels
from tfedge.reports.compression import StagePlans, format_compression
from tfedge.reports.page import write_html

__all__ = [
    "STAGES",
    "stages_from_flags",
    "load_recipe",
    "optimize",
]


def stages_from_flags(
    prune=None,
    structured=None,
    prune_filters=None,
    cluster=None,
    qat=False,
    distill=False,
    factorize=None,
    epochs=None,
) -> list[dict]:
    """Turn ``tfedge optimize`` flags into an ordered stage list.

    The order is the stage registry's (:mod:`tfedge.models.stages`), the one that keeps each
    stage's work: a distilled student first, then factorization and filter pruning (which change
    the architecture), then magnitude pruning, clustering (preserving sparsity) and QAT last
    (preserving sparsity and clusters).

    Example:
        >>> stages_from_flags(prune=0.8, qat=True)
        [{'name': 'prune', 'sparsity': 0.8}, {'name': 'qat', 'preserve': 'sparsity'}]
    """
    stages = []
    if distill:
        stages.append({"name": "distill", "new_student": True})
    if factorize is not None:
        value = float(factorize)
        stages.append(
            {"name": "factorize", **({"energy": value} if value < 1 else {"rank": int(value)})}
        )
    if prune_filters is not None:
        _fraction(prune_filters, "--prune-filters")
        stages.append({"name": "prune_filters", "ratio": float(prune_filters)})
    if prune is not None or structured:
        stage = {
            "name": "prune",
            "sparsity": _fraction(prune if prune is not None else 0.5, "--prune"),
        }
        if structured:
            stage["structure"] = structured
        stages.append(stage)
    if cluster is not None:
        if int(cluster) < 2:
            raise OptimizationError(
                f"--cluster {cluster}: need at least 2 clusters", "try --cluster 16"
            )
        stages.append({"name": "cluster", "clusters": int(cluster)})
    if qat:
        stages.append({"name": "qat"})
    if not stages:
        raise OptimizationError(
            "no optimization asked for",
            "give at least one of --prune S, --structured 2:4, --prune-filters F, --cluster N, "
            "--qat, --distill, --factorize R, or --recipe FILE",
        )
    if epochs is not None:
        for stage in stages:
            stage["epochs"] = int(epochs)
    stages.sort(key=lambda stage: registry.get(stage["name"]).order)
    return registry.preserving(stages)


def _fraction(value, flag) -> float:
    value = float(value)
    if not 0.0 < value < 1.0:
        raise OptimizationError(
            f"{flag} {value}: expected a fraction between 0 and 1", f"e.g. {flag} 0.5"
        )
    return value


def _check_layer_names(options: dict, model) -> None:
    """Refuse a recipe's ``convert: {int16: ..., keep_float: ...}`` name that is no layer."""
    layers = [layer.name for layer in model.layers]
    for option in ("int16", "keep_float"):
        for name in options.get(option) or ():
            if name not in layers:
                shown = ", ".join(layers[:20]) + (", ..." if len(layers) > 20 else "")
                raise OptimizationError(
                    f"recipe convert: {option} names {name!r}, which is no layer of the model",
                    f"layers are matched by exact name; the model's layers are {shown}",
                )


def _key(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _content_key(arrays) -> str:

    digest = hashlib.sha256()
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype}{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()[:16]


def _label(stage: dict) -> str:
    params = ", ".join(f"{k}={v}" for k, v in stage.items() if k not in ("name", "epochs"))
    return f"{stage['name']}({params})" if params else stage["name"]


def _accuracy(model, data) -> float:

    if isinstance(data, DataStream):  # streamed: batch by batch
        from tfedge.models.training import evaluate

        return evaluate(model, data)
    predictions = np.asarray(model.predict(data.x, batch_size=256, verbose=0))
    labels = predicted_labels(predictions, outputs_probabilities(model, data.x))
    return float((labels == data.y).mean())


def optimize(
    model,
    train,
    val,
    *,
    stages: list[dict],
    out_dir,
    strategy=None,
    target=None,
    devices=("local",),
    ssh_config=None,
    calib_samples: int = 300,
    runs: int = DEFAULT_RUNS,
    resume: bool = True,
    convert_options: dict | None = None,
) -> dict:
    """Run the stages, convert each result to int8, bench everything in one run, write the report.

    Args:
        model: a ``.keras`` / ``.h5`` path (Keras 2 or 3), a :class:`~tfedge.core.loading.LoadedModel`,
            or a tf_keras model.
        train: training data (any form :func:`tfedge.core.data.load_data` accepts), with labels.
        val: validation data, with labels; accuracy is measured on it.
        stages: ``[{"name": "prune", "sparsity": 0.8}, {"name": "qat"}, ...]``.
        out_dir: the output folder.
        strategy: ``"mirrored"`` or a ``tf.distribute`` strategy for the fine-tuning.
        target: a converter target profile (e.g. ``"edgetpu"``).
        devices: where to bench (``"local"`` or ``ssh://`` URLs).
        ssh_config: an ssh config file for ``ssh://`` devices.
        calib_samples: calibration samples for each int8 conversion.
        runs: timed runs per model in the bench.
        resume: reuse checkpoints of finished stages with the same settings.
        convert_options: what each stage's model is converted with (a recipe's ``convert``:
            ``mode``, ``io``, ``weights``, ``int16``, ``keep_float``); the post-training int8
            baseline is converted plainly.

    Returns:
        The report dict (also written to ``out_dir/report.json``).
    """

    out = Path(out_dir)
    checkpoints = out / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    if isinstance(model, (str, Path)):
        model = load_model(model)
    source = model.path if isinstance(model, LoadedModel) else getattr(model, "name", "model")
    if isinstance(model, LoadedModel) and model.keras_version == 3:
        echo(
            "Keras 3 model: rebuilt as tf_keras (same layers, same weights) for the training wrappers"
        )
    base = to_keras2(model) if isinstance(model, LoadedModel) else model
    shape = input_shape_of(base)
    classes = num_classes(base)
    train = stream_data(
        train, input_shape=shape, require_labels=True, name="--train", num_classes=classes
    )
    val = stream_data(
        val, input_shape=shape, require_labels=True, name="--val", num_classes=classes
    )
    for stage in stages:
        registry.get(stage["name"]).load()  # fail early on a stage whose module is missing
    _check_layer_names(convert_options or {}, base)

    def tflite(model, name, options=convert_options or {}):
        path = checkpoints / f"{name}.tflite"
        write_atomically(
            path, convert(model, calib=train, calib_samples=calib_samples, target=target, **options)
        )
        return path

    started = time.time()
    baseline_accuracy = _accuracy(base, val)
    echo(
        f"baseline: {source} — Keras accuracy {baseline_accuracy * 100:.2f}% on {len(val)} validation samples"
    )
    entries = []
    float_path = checkpoints / "00-float32.tflite"
    write_atomically(float_path, convert(base, mode="float32"))
    entries.append(("float32", float_path, baseline_accuracy))
    entries.append(("int8", tflite(base, "00-int8", {}), baseline_accuracy))
    plans = StagePlans()  # requested against achieved sparsity and distinct values, per stage
    compression = {str(path): plans.entry(path, base) for _, path, _ in entries}

    # The teacher is a frozen copy: distillation freezes its teacher, and the first stage trains
    # ``base`` itself.
    teacher = frozen_copy(base)
    state_file = checkpoints / "state.json"
    state = json.loads(state_file.read_text()) if resume and state_file.is_file() else {}
    current = base
    history = []
    # Checkpoints belong to the model's weights and the training data, not to their paths: a model
    # retrained and saved at the same path retrains every stage.
    source_key = _content_key(base.get_weights())
    train_key = train.key() if hasattr(train, "_reader") else _content_key([train.x, train.y])
    for index, stage in enumerate(stages, start=1):
        history.append(stage)
        key = _key(
            {
                "source": source_key,
                "stages": history,
                "train": train_key,
                "code": code_key(history),
            }
        )
        name = f"{index:02d}-{stage['name']}"
        keras_path = checkpoints / f"{name}.keras"
        label = _label(stage)
        plans.before(stage, current)
        if state.get(name) == key and keras_path.is_file():
            echo(f"stage {index}/{len(stages)}: {label} — resumed from {keras_path}")
            current = load_model(keras_path).model
        else:
            echo(f"stage {index}/{len(stages)}: {label}")
            current = run_stage(stage, current, train, val, teacher=teacher, strategy=strategy)
            save_atomically(current, keras_path)
            state[name] = key
            write_atomically(state_file, json.dumps(state, indent=2))
        accuracy = _accuracy(current, val)
        echo(f"  Keras accuracy {accuracy * 100:.2f}%")
        entries.append((label, tflite(current, name), accuracy))
        compression[str(entries[-1][1])] = plans.entry(entries[-1][1], current)

    final_keras = out / "model.keras"
    save_atomically(current, final_keras)
    final_tflite = out / "model.tflite"
    write_atomically(final_tflite, entries[-1][1].read_bytes())
    val_npz = val.save(checkpoints / "val.npz")

    report = bench(
        [path for _, path, _ in entries],
        data=val_npz,
        devices=devices,
        ssh_config=ssh_config,
        runs=runs,
    )
    rows = report["results"]
    by_model = {str(path): (label, accuracy) for label, path, accuracy in entries}
    for row in rows:
        label, accuracy = by_model.get(str(row["model"]), (None, None))
        row["stage"] = label
        row["keras_accuracy"] = accuracy
        row["compression"] = compression.get(str(row["model"]))
    write_results(out / "report.json", rows)
    write_html(out / "report.html", rows, title=f"tfedge optimize: {Path(str(source)).name}")
    echo(format_results(rows))
    table = format_compression(rows)
    if table:
        echo(table)
    echo(
        f"wrote {final_keras}, {final_tflite}, {out / 'report.json'}, {out / 'report.html'} "
        f"({time.time() - started:.0f} s)"
    )
    return {"tfedge_version": report["tfedge_version"], "results": rows}
