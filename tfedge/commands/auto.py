"""``tfedge optimize --auto``: the accuracy-aware search, measured for real, and its outputs.

:func:`tfedge.models.search.run_search` is the search (Optuna); this module gives it the measurement:
:class:`RecipeEvaluator` runs a recipe's stages the way ``tfedge optimize`` does (the same stage
functions, the same frozen float teacher, so ``tfedge optimize --recipe`` reproduces a candidate),
converts the result to fully-int8 TFLite and benches it with LiteRT on the validation data, on this
machine or on an ssh device. Stage outputs are cached by their stage list, so the recipes that share
a start (prune 80 % → + cluster 16 → + QAT) train it once. The fine-tunes run in a child process
(:class:`tfedge.commands.stage_worker.StageWorker`): a native crash inside TensorFlow fails that candidate,
and the search goes on.

:func:`auto_optimize` ties both together and writes ``DIR/model.tflite`` (the best on the objective
within the tolerance, confirmed on held-back validation data), ``DIR/model.keras``, ``DIR/report.json`` (every candidate, in optimize's
schema plus ``trial``, ``recipe``, ``state``, ``pareto``, ``within_tolerance``, ``chosen``, and a
``search`` summary), ``DIR/report.html`` (candidates table and Pareto plot) and ``DIR/recipe.yaml``.
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

import gzip
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np

from tfedge.core.console import echo
from tfedge.core.errors import OptimizationError, first_line
from tfedge.core.files import write_atomically
from tfedge.models.recipe import validate_recipe
from tfedge.version import __version__

__all__ = [
    "RecipeEvaluator",
    "auto_optimize",
    "write_outputs",
    "fingerprint",
    "split_confirmation",
    "MIN_SPLIT_SAMPLES",
]

# Below this many validation samples no confirmation part is kept back: each half would be too
# small to measure a one-point tolerance on (one sample is already 2 points at 50).
MIN_SPLIT_SAMPLES = 100
CONFIRM_FRACTION = 0.5
CONFIRM_SEED = 0


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:32]


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:32]


def _data_digest(data) -> str:
    digest = hashlib.sha256(data.x.tobytes())
    if data.y is not None:
        digest.update(data.y.tobytes())
    return digest.hexdigest()[:32]


def split_confirmation(data, fraction: float = CONFIRM_FRACTION, seed: int = CONFIRM_SEED):
    """Split labelled data into ``(search, confirmation)`` parts, seeded and stratified by label.

    Each label's samples are shuffled with ``seed`` and ``fraction`` of them (rounded) go to the
    confirmation part, so both parts keep the class balance; equal inputs give equal parts.

    Example:
        >>> search_part, confirm_part = split_confirmation(val)  # doctest: +SKIP
        >>> len(search_part) + len(confirm_part) == len(val)  # doctest: +SKIP
        True
    """
    from tfedge.core.data import Dataset

    rng = np.random.default_rng(seed)
    held = []
    for label in np.unique(data.y):
        members = np.flatnonzero(data.y == label)
        count = int(round(len(members) * fraction))
        if count >= len(members):  # a label with one sample stays in the search part
            count = len(members) - 1
        held.extend(rng.permutation(members)[:count].tolist())
    mask = np.zeros(len(data), dtype=bool)
    mask[held] = True

    def part(select):
        return Dataset(data.x[select], data.y[select], data.class_names, data.source)

    return part(~mask), part(mask)


def fingerprint(source, model, train, val, *, device: str, target=None) -> dict:
    """What a study searches: the model, the data and the measuring setup, each as a digest.

    A study holding another model's (or data's, or device's) figures is refused when joined.

    Example:
        >>> fingerprint("model.keras", model, train, val, device="local")  # doctest: +SKIP
        {'model': '3f…', 'train': '…', 'val': '…', 'device': 'local', 'target': None}
    """
    path = Path(str(source))
    if path.exists():
        model_digest = _file_digest(path)
    else:
        digest = hashlib.sha256(model.to_json().encode())
        for weights in model.get_weights():
            digest.update(weights.tobytes())
        model_digest = digest.hexdigest()[:32]
    return {
        "model": model_digest,
        "train": _data_digest(train),
        "val": _data_digest(val),
        "device": device,
        "target": None if target is None else str(target),
    }


class RecipeEvaluator:
    """Measure a recipe: run its stages, convert to fully-int8 TFLite, bench with LiteRT.

    Calling it with a recipe (``{"stages": [...]}``; an empty list is post-training int8;
    ``{"stages": [], "convert": {"mode": "float32"}}`` is the float reference) returns the bench
    row of the result (``accuracy`` on the validation data, ``size_gzip_bytes``, ``latency_ms``...)
    plus ``stage`` (the recipe's label), ``keras_accuracy`` and ``keras_model`` (its saved path).

    Args:
        model: a ``.keras``/``.h5`` path, a :class:`~tfedge.core.loading.LoadedModel` or a tf_keras model.
        train: labelled training data (any form :func:`tfedge.core.data.load_data` takes).
        val: labelled validation data; accuracy is measured on it.
        out_dir: the search folder (``cache/`` and ``candidates/`` go there).
        device: where latency is measured: ``"local"`` or ``"ssh://[USER@]HOST[:PORT]"``.
        ssh_config: an ssh config file for ssh devices.
        target: a converter target profile (e.g. ``"edgetpu"``).
        strategy: a ``tf.distribute`` strategy (or its name) for the fine-tunes.
        runs: timed runs per candidate.
        calib_samples: calibration samples per int8 conversion.
        confirm_fraction: the part of ``val`` kept back for confirmation (0 keeps none; with
            fewer than :data:`MIN_SPLIT_SAMPLES` samples none is kept, with a warning).
        isolate: run the fine-tunes in a child process (:class:`tfedge.commands.stage_worker.StageWorker`),
            so a native crash inside TensorFlow fails that candidate instead of ending the
            search. A ``strategy`` given as an object (not a name) cannot cross to the child:
            the fine-tunes then run in this process.

    Call :meth:`close` when done (it stops the child process).

    Example:
        >>> evaluate = RecipeEvaluator("model.keras", "train.npz", "val.npz", out_dir="out")  # doctest: +SKIP
        >>> evaluate({"stages": [{"name": "qat"}]})["accuracy"]  # doctest: +SKIP
        0.9849
    """

    def __init__(
        self,
        model,
        train,
        val,
        *,
        out_dir,
        device: str = "local",
        ssh_config=None,
        target=None,
        strategy=None,
        runs: int = 100,
        calib_samples: int = 300,
        confirm_fraction: float = CONFIRM_FRACTION,
        isolate: bool = True,
    ):
        from tfedge.converters import input_shape_of
        from tfedge.core.data import load_data
        from tfedge.core.loading import LoadedModel, load_model

        self.out = Path(out_dir)
        self.cache = self.out / "cache"
        self.candidates = self.out / "candidates"
        for folder in (self.cache, self.candidates):
            folder.mkdir(parents=True, exist_ok=True)
        if isinstance(model, (str, Path)):
            model = load_model(model)
        self.source = (
            model.path if isinstance(model, LoadedModel) else getattr(model, "name", "model")
        )
        from tfedge.models.rebuild import to_keras2
        from tfedge.models.training import num_classes

        self.base = to_keras2(model)
        shape = input_shape_of(self.base)
        classes = num_classes(self.base)
        self.train = load_data(
            train, input_shape=shape, require_labels=True, name="--train", num_classes=classes
        )
        self.val = load_data(
            val, input_shape=shape, require_labels=True, name="--val", num_classes=classes
        )
        self.confirm = None
        if confirm_fraction and len(self.val) >= MIN_SPLIT_SAMPLES:
            self.val, self.confirm = split_confirmation(self.val, confirm_fraction)
            self.confirm_npz = self.confirm.save(self.out / "confirm.npz")
        elif confirm_fraction:
            echo(
                f"warning: --val has {len(self.val)} samples, fewer than {MIN_SPLIT_SAMPLES}: "
                "none is kept back to confirm the choice, so the result's accuracy is measured "
                "on the same data the search chose it on and may be optimistic"
            )
        self.val_npz = self.val.save(self.out / "val.npz")
        self.device = device
        self.ssh_config = ssh_config
        self.target = target
        self.strategy = strategy
        self.runs = runs
        self.calib_samples = calib_samples
        self.fingerprint = fingerprint(
            self.source, self.base, self.train, self.val, device=device, target=target
        )
        self.fingerprint["confirm"] = None if self.confirm is None else _data_digest(self.confirm)
        self._teacher = None
        self.isolate = isolate and (strategy is None or isinstance(strategy, str))
        self._worker = None
        self._base_file = None

    def confirm_correct(self, candidate: dict) -> np.ndarray:
        """Which confirmation samples a candidate's int8 model (LiteRT, on this machine) gets right.

        Only inference on the candidate's stored ``.tflite``; a candidate measured on another
        worker (its file is not here) is trained and converted again here first.

        Returns:
            A 0/1 array, one entry per confirmation sample (its mean is the accuracy).

        Example:
            >>> evaluate.confirm_correct(result.best).mean()  # doctest: +SKIP
            0.9749
        """
        from tfedge.devices.runner import bench_models

        tflite = Path(str((candidate.get("figures") or {}).get("model") or ""))
        if not tflite.is_file():
            tflite = Path(self(candidate["recipe"])["model"])
        data = (self.confirm.x, self.confirm.y)
        try:
            ((kind, row),) = list(
                bench_models([str(tflite)], data=data, warmup=0, runs=1, keep_top1=True)
            )
        except Exception as exc:  # the runtime's own errors, whatever their type
            raise OptimizationError(
                f"cannot run {tflite.name} on the confirmation data: {first_line(exc)}",
                "check that ai-edge-litert is installed (pip install ai-edge-litert)",
            ) from exc
        if kind != "result" or len(row.get("top1") or ()) != len(self.confirm):
            raise OptimizationError(
                f"cannot measure {tflite.name} on the confirmation data: "
                f"{row.get('message') or 'no prediction per sample'}",
                row.get("hint"),
            )
        return (np.asarray(row["top1"]) == self.confirm.y).astype(np.int8)

    @property
    def teacher(self):
        """A frozen copy of the float model, the teacher every fine-tune distils from."""
        if self._teacher is None:
            from tfedge.models.cloning import frozen_copy

            self._teacher = frozen_copy(self.base)
        return self._teacher

    def _stage_key(self, stages, fidelity=None) -> str:
        from tfedge.commands.optimize import code_key

        settings = {"model": self.fingerprint, "stages": stages, "code": code_key(stages)}
        if fidelity:
            settings["fidelity"] = fidelity
        text = json.dumps(
            settings,
            sort_keys=True,
            default=str,
        )
        return hashlib.sha256(text.encode()).hexdigest()[:20]

    def _run_stages(self, stages, on_stage=None, fidelity=None):
        from tfedge.commands.optimize import STAGES
        from tfedge.core.loading import load_model
        from tfedge.models.search import recipe_label
        from tfedge.models.training import evaluate

        current, source = self.base, None
        for index, stage in enumerate(stages):
            if stage.get("name") not in STAGES:
                raise OptimizationError(
                    f"unknown stage {stage!r}; expected one of {', '.join(STAGES)}"
                )
            prefix = stages[: index + 1]
            fraction = None
            if fidelity:
                # The screen: at most fidelity["epochs"] epochs, on a seeded share of the data.
                epochs = min(int(stage.get("epochs") or fidelity["epochs"]), fidelity["epochs"])
                prefix = [*prefix[:-1], {**stage, "epochs": epochs}]
                fraction = fidelity.get("data_fraction")
            key = self._stage_key(prefix, fidelity)
            path = self.cache / f"{key}.keras"
            label = recipe_label({"stages": stages[: index + 1]})
            if path.is_file():
                current = load_model(path).model
            else:
                echo(f"  stage {index + 1}/{len(stages)}: {label}" + _screen_note(fidelity))
                current = self._run_stage(current, source, prefix, path, label, fraction)
            source = path
            if on_stage is not None:
                on_stage(index, evaluate(current, self.val))
        return current

    def _run_stage(self, current, source, prefix: list, path: Path, label: str, fraction=None):
        """The last stage of ``prefix``, in the child process if there is one, saved at ``path``.

        An error of the stage itself carries ``stages`` (the recipe up to it), so the search
        skips the recipes that start the same way; a crash or a child that cannot start does not.
        """
        from tfedge.commands.stage_worker import StageFailed, WorkerUnavailable
        from tfedge.core.loading import load_model

        stage = prefix[-1]
        worker = self._stage_worker()
        if worker is not None:
            try:
                worker.run(
                    source or self._base_file,
                    stage,
                    path,
                    label=f"stage {label}",
                    data_fraction=fraction,
                )
                return load_model(path).model
            except StageFailed as exc:
                exc.stages = list(prefix)
                raise
            except WorkerUnavailable as exc:
                echo(
                    f"warning: the fine-tunes cannot run in a process of their own ({exc.message}); "
                    "they run in this one, where a native crash inside TensorFlow ends the search"
                )
                self.isolate, self._worker = False, None
        try:
            return self._run_here(current, stage, path, fraction)
        except Exception as exc:
            exc.stages = list(prefix)
            raise

    def _run_here(self, model, stage: dict, path: Path, fraction=None):
        from tfedge.commands.optimize import run_stage, save_atomically
        from tfedge.commands.stage_worker import fraction_of

        model = run_stage(
            stage,
            model,
            fraction_of(self.train, fraction),
            self.val,
            teacher=self.teacher,
            strategy=self.strategy,
        )
        save_atomically(model, path)
        return model

    def _stage_worker(self):
        """The child process the fine-tunes run in (None: they run here, see ``isolate``)."""
        if not self.isolate:
            return None
        if self._worker is None:
            from tfedge.commands.optimize import save_atomically
            from tfedge.commands.stage_worker import StageWorker

            base = self.cache / f"base-{self.fingerprint['model']}.keras"
            train = self.cache / f"train-{self.fingerprint['train']}.npz"
            try:
                if not base.is_file():
                    save_atomically(self.base, base)
                if not train.is_file():
                    save_atomically(self.train, train)
            except Exception as exc:  # a model Keras cannot save cannot be cached either
                raise OptimizationError(
                    f"cannot save the model for the fine-tune process: {exc}",
                    "register custom layers with keras.utils.register_keras_serializable",
                ) from exc
            self._base_file = base
            self._worker = StageWorker(base, train, self.val_npz, strategy=self.strategy)
        return self._worker

    def close(self) -> None:
        """Stop the fine-tune process, if one runs (the evaluator starts a new one when called).

        Example:
            >>> evaluate.close()  # doctest: +SKIP
        """
        if self._worker is not None:
            self._worker.close()

    def __call__(self, recipe: dict, on_stage=None, fidelity: dict | None = None) -> dict:
        from tfedge.commands.bench import bench
        from tfedge.converters import convert
        from tfedge.core.inspector import inspect_model
        from tfedge.models.search import recipe_key, recipe_label
        from tfedge.models.training import evaluate

        stages = list(recipe.get("stages", []))
        options = dict(recipe.get("convert") or {})
        mode = options.pop("mode", "int8")
        worst = int(options.pop("int16_worst", 0) or 0)
        key = recipe_key(recipe if fidelity is None else {**recipe, "fidelity": fidelity})
        label = recipe_label(recipe)
        model = self._run_stages(stages, on_stage, fidelity) if stages else self.base
        keras_path = self.candidates / f"{key}.keras"
        if stages:
            model.save(keras_path)
        tflite = self.candidates / f"{key}.tflite"
        if worst:
            options["int16"] = self._worst_layers(model, worst)
        if mode == "float32":
            blob = convert(model, mode="float32")
        else:
            blob = convert(
                model,
                mode=mode,
                calib=self.train,
                calib_samples=self.calib_samples,
                target=self.target,
                **options,
            )
        write_atomically(tflite, blob)
        report = bench(
            [tflite],
            data=self.val_npz,
            devices=[self.device],
            ssh_config=self.ssh_config,
            runs=self.runs,
            warmup=min(20, self.runs),
        )
        (row,) = report["results"]
        row["stage"] = label
        row["keras_accuracy"] = evaluate(model, self.val)
        row["keras_model"] = str(keras_path) if stages else str(self.source)
        row.setdefault("size_gzip_bytes", len(gzip.compress(blob, 9)))
        if options.get("int16"):
            row["int16_layers"] = list(options["int16"])
        row["fidelity"] = dict(fidelity) if fidelity and stages else "full"
        row["edgetpu_compatible"] = bool(inspect_model(blob)["edgetpu"]["compatible"])
        return row

    def _worst_layers(self, model, count: int) -> list[str]:
        """The ``count`` layers with the lowest int8 SQNR (``tfedge analyze``'s ranking)."""
        from tfedge.converters.layer_errors import layer_errors

        rows = layer_errors(model, self.train, calib_samples=self.calib_samples)
        layers = {layer.name for layer in model.layers}
        names = []
        for row in sorted(rows, key=lambda r: r["sqnr_db"]):
            if row["name"] in layers and row["name"] not in names:
                names.append(row["name"])
            if len(names) == count:
                break
        return names


def _screen_note(fidelity) -> str:
    if not fidelity:
        return ""
    share = fidelity.get("data_fraction")
    data = f" on {share * 100:g} % of the data" if share and share < 1 else ""
    return f" (screen: {fidelity['epochs']} epoch{'s' if fidelity['epochs'] > 1 else ''}{data})"


def _edgetpu_note(figures: dict) -> str:
    """``, EdgeTPU: yes`` / ``, not for the EdgeTPU (int16 ...)`` where the row says."""
    if figures.get("edgetpu_compatible") is None:
        return ""
    if figures["edgetpu_compatible"]:
        return ", EdgeTPU: yes"
    why = f" (int16 {', '.join(figures['int16_layers'])})" if figures.get("int16_layers") else ""
    return f", EdgeTPU: no{why}"


def _echo_result(result) -> None:
    from tfedge.models.search import recipe_label

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
            candidate first (1 epoch on a seeded 25 % of ``train``) and gives the full fine-tune
            only to those Optuna's successive-halving pruner promotes (the report's ``fidelity``
            column says which).

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
    from tfedge.models.search import check_settings, open_storage, run_search

    check_settings(tolerance, objective, budget_minutes, max_trials)
    if fidelity not in ("full", "multi"):
        raise OptimizationError(
            f"fidelity {fidelity!r} is unknown; expected 'full' or 'multi'",
            "use fidelity='multi' to screen candidates briefly before the full fine-tune",
        )
    from tfedge.models.search import SCREEN

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
        f"search: objective {objective}, tolerance {_points(tolerance)}, device {device}, "
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
            fidelity=SCREEN if fidelity == "multi" else None,
        )
        write_outputs(result, out, measure)
    finally:
        if evaluator is None:
            measure.close()
    _echo_result(result)
    if result.best is None:
        raise OptimizationError(
            f"no candidate kept the tolerance of {_points(tolerance)} below the float "
            f"model's {result.reference_accuracy * 100:.2f}% ({len(result.candidates)} tried); "
            f"see {out / 'report.json'}",
            "allow a larger --tolerance, more --budget-minutes, or more --epochs",
        )
    return result


def _points(tolerance: float) -> str:
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
    import yaml

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
    from tfedge.reports.page import write_html

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
    title = f"tfedge optimize --auto: {result.objective}, tolerance {_points(result.tolerance)}"
    confirmation = result.extra.get("confirmation") or {}
    if confirmation.get("fallback"):
        title += " (no candidate confirmed: post-training int8)"
    write_html(path, shown, title=title)
