"""The search's measurement: a recipe run, converted to fully-int8 TFLite and benched, for real.

:class:`RecipeEvaluator` runs a recipe's stages the way ``tfedge optimize`` does (the same stage
functions, the same frozen float teacher, so ``tfedge optimize --recipe`` reproduces a candidate),
converts the result to fully-int8 TFLite and benches it with LiteRT on the validation data, on this
machine or on an ssh device. Stage outputs are cached by their stage list, so the recipes that share
a start (prune 80 % → + cluster 16 → + QAT) train it once. The fine-tunes run in a child process
(:class:`tfedge.commands.stage_worker.StageWorker`): a native crash inside TensorFlow fails that candidate,
and the search goes on.

The validation data is split (seeded, stratified by label, :func:`split_confirmation`) into a
*search* part, which the fine-tunes' best-epoch choice and every candidate's measured accuracy use,
and a *confirmation* part that no training or search decision sees (:meth:`RecipeEvaluator.confirm_correct`
measures a candidate on it). :func:`fingerprint` names what a study searches.

Example:
    >>> evaluate = RecipeEvaluator("model.keras", "train.npz", "val.npz", out_dir="out")  # doctest: +SKIP
    >>> evaluate({"stages": [{"name": "qat"}]})["size_gzip_bytes"]  # doctest: +SKIP
    11027
"""

import gzip
import hashlib
import json
from pathlib import Path

import numpy as np

from tfedge.commands.bench import bench
from tfedge.commands.search_data import (
    CONFIRM_FRACTION,
    MIN_SPLIT_SAMPLES,
    _data_digest,
    _part_digest,
    fingerprint,
    split_confirmation,
)
from tfedge.commands.stage_worker import StageFailed, WorkerUnavailable, fraction_of
from tfedge.converters import convert, input_shape_of
from tfedge.converters.layer_errors import layer_errors
from tfedge.core.console import echo
from tfedge.core.errors import OptimizationError, first_line
from tfedge.core.files import save_atomically, write_atomically
from tfedge.core.inspector import inspect_model
from tfedge.core.loading import LoadedModel, load_model
from tfedge.core.streams import DataStream, stream_data
from tfedge.devices.runner import bench_models
from tfedge.models.rebuild import to_keras2
from tfedge.models.recipe import STAGES
from tfedge.models.search import recipe_key, recipe_label
from tfedge.models.stages import code_key, run_stage
from tfedge.models.training import evaluate, num_classes

__all__ = [
    "RecipeEvaluator",
    "fingerprint",
    "split_confirmation",
    "MIN_SPLIT_SAMPLES",
    "CONFIRM_FRACTION",
]


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

        self.out = Path(out_dir)
        self.cache = self.out / "cache"
        self._shares = {}  # the screens' shares of the training data, by fraction
        self.candidates = self.out / "candidates"
        for folder in (self.cache, self.candidates):
            folder.mkdir(parents=True, exist_ok=True)
        if isinstance(model, (str, Path)):
            model = load_model(model)
        self.source = (
            model.path if isinstance(model, LoadedModel) else getattr(model, "name", "model")
        )

        self.base = to_keras2(model)
        shape = input_shape_of(self.base)
        classes = num_classes(self.base)
        # Small sets are read whole; larger ones stream (tfedge.core.streams.IN_MEMORY_BYTES).
        self.train = stream_data(
            train, input_shape=shape, require_labels=True, name="--train", num_classes=classes
        )
        self.val = stream_data(
            val, input_shape=shape, require_labels=True, name="--val", num_classes=classes
        )
        self._train_source = train
        whole = _data_digest(self.val)
        val_digest = confirm_digest = None
        self.confirm = self.confirm_npz = None
        if confirm_fraction and len(self.val) >= MIN_SPLIT_SAMPLES:
            self.val, self.confirm = split_confirmation(self.val, confirm_fraction, folder=self.out)
            if isinstance(self.confirm, DataStream):  # the parts' files are new on every run
                val_digest = _part_digest(whole, confirm_fraction, "search")
                confirm_digest = _part_digest(whole, confirm_fraction, "confirm")
                self.confirm_npz = self.out / "confirm.npz"
            else:
                self.confirm_npz = self.confirm.save(self.out / "confirm.npz")
        elif confirm_fraction:
            echo(
                f"warning: --val has {len(self.val)} samples, fewer than {MIN_SPLIT_SAMPLES}: "
                "none is kept back to confirm the choice, so the result's accuracy is measured "
                "on the same data the search chose it on and may be optimistic"
            )
        if val_digest is None:
            self.val_npz = self.val.save(self.out / "val.npz")
        else:
            self.val_npz = self.out / "val.npz"  # written by the split
        self.device = device
        self.ssh_config = ssh_config
        self.target = target
        self.strategy = strategy
        self.runs = runs
        self.calib_samples = calib_samples
        self.fingerprint = fingerprint(
            self.source, self.base, self.train, self.val, device=device, target=target
        )
        if val_digest is not None:
            self.fingerprint["val"] = val_digest
        self.fingerprint["confirm"] = confirm_digest or (
            None if self.confirm is None else _data_digest(self.confirm)
        )
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

        tflite = Path(str((candidate.get("figures") or {}).get("model") or ""))
        if not tflite.is_file():
            tflite = Path(self(candidate["recipe"])["model"])
        streamed = isinstance(self.confirm, DataStream)  # LiteRT reads the file in slices
        data = str(self.confirm_npz) if streamed else (self.confirm.x, self.confirm.y)
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
        return (np.asarray(row["top1"]) == np.asarray(self.confirm.y)).astype(np.int8)

    @property
    def teacher(self):
        """A frozen copy of the float model, the teacher every fine-tune distils from."""
        if self._teacher is None:
            from tfedge.models.cloning import frozen_copy

            self._teacher = frozen_copy(self.base)
        return self._teacher

    def _stage_key(self, stages, fidelity=None) -> str:

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

        model = run_stage(
            stage,
            model,
            self._share(fraction),
            self.val,
            teacher=self.teacher,
            strategy=self.strategy,
        )
        save_atomically(model, path)
        return model

    def _share(self, fraction):
        """The training data a stage fine-tunes on here: all of it, or the screen's share."""
        if fraction is None:
            return self.train
        if fraction not in self._shares:
            self._shares[fraction] = fraction_of(self.train, fraction, folder=self.cache)
        return self._shares[fraction]

    def _stage_worker(self):
        """The child process the fine-tunes run in (None: they run here, see ``isolate``)."""
        if not self.isolate:
            return None
        if self._worker is None:
            from tfedge.commands.stage_worker import StageWorker

            base = self.cache / f"base-{self.fingerprint['model']}.keras"
            train = _stream_source(self.train, self._train_source)
            try:
                if not base.is_file():
                    save_atomically(self.base, base)
                if train is None:  # in memory, or a pipeline: an .npz the child streams
                    train = self.cache / f"train-{self.fingerprint['train']}.npz"
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

        stages = list(recipe.get("stages", []))
        options = dict(recipe.get("convert") or {})
        mode = options.pop("mode", "int8")
        worst = int(options.pop("int16_worst", 0) or 0)
        key = recipe_key(recipe if fidelity is None else {**recipe, "fidelity": fidelity})
        label = recipe_label(recipe)
        model = self._run_stages(stages, on_stage, fidelity) if stages else self.base
        keras_path = self.candidates / f"{key}.keras"
        if stages:
            save_atomically(model, keras_path)
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

        rows = layer_errors(model, self.train, calib_samples=self.calib_samples)
        layers = {layer.name for layer in model.layers}
        names = []
        for row in sorted(rows, key=lambda r: r["sqnr_db"]):
            if row["name"] in layers and row["name"] not in names:
                names.append(row["name"])
            if len(names) == count:
                break
        return names


def _stream_source(data, source) -> str | None:
    """The file (or TFRecord glob) a streamed set was opened from, for the child to stream too."""
    if not isinstance(data, DataStream) or not isinstance(source, (str, Path)):
        return None
    path = Path(source)
    return str(path.resolve()) if path.exists() else str(source)


def _screen_note(fidelity) -> str:
    if not fidelity:
        return ""
    share = fidelity.get("data_fraction")
    data = f" on {share * 100:g} % of the data" if share and share < 1 else ""
    return f" (screen: {fidelity['epochs']} epoch{'s' if fidelity['epochs'] > 1 else ''}{data})"
