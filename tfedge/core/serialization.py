"""Every tfmot class needed to load a model that tfedge's compression stages produced.

:func:`tfedge.core.loading.load_model` passes these to Keras, so a QAT model (tfmot's quantize
wrappers, quantizers and configs, including the sparsity- and cluster-preserving ones) saved with
``model.save("model.keras")`` loads again without any scope. Importing this module is cheap:
TensorFlow and tfmot are imported when :func:`custom_objects` is called.

Example:
    >>> from tfedge.core.serialization import custom_objects
    >>> "QuantizeWrapperV2" in custom_objects()  # doctest: +SKIP
    True
"""

# TensorFlow, and the tfedge modules that import it, load inside the functions that use them:
# `tfedge --help` and `tfedge inspect` import this module (0.15 s, against 4.5 s with TensorFlow).
import importlib

from tfedge.core.keras_internals import own_variables

__all__ = ["custom_objects", "tfmot_internal", "patch_tfmot_saving"]

_MODULES = (
    "quantization.keras.default_8bit.default_8bit_quantize_configs",
    "quantization.keras.default_8bit.default_8bit_quantizers",
    "quantization.keras.default_8bit.default_8bit_quantize_registry",
    "quantization.keras.collab_opts.prune_preserve.prune_preserve_quantize_registry",
    "quantization.keras.collab_opts.cluster_preserve.cluster_preserve_quantize_registry",
    "quantization.keras.quantizers",
    "quantization.keras.quantize_config",
)
_patched = False


def tfmot_internal(path: str):
    """A module inside tfmot's ``python.core`` package (registries, wrappers, quantizers).

    tfmot itself is imported by :mod:`tfedge.core.backend`; this only reaches into it.

    Example:
        >>> tfmot_internal("sparsity.keras.prune_registry").PruneRegistry  # doctest: +SKIP
    """
    from tfedge.core.backend import tfmot

    return importlib.import_module(f"{tfmot().__name__}.python.core.{path}")


def _serializable_classes(module) -> dict:
    found = {}
    for name, value in vars(module).items():
        if (
            isinstance(value, type)
            and value.__module__ == module.__name__
            and not name.startswith("_")
            and hasattr(value, "get_config")
        ):
            found[name] = value
    return found


def _keyed_variables(layer) -> list:
    """A layer's own variables (each once) keyed by their short name: ``kernel_min``, ``bias``..."""
    seen, keyed, counts = set(), [], {}
    for variable in own_variables(layer):
        if id(variable) in seen:
            continue
        seen.add(id(variable))
        base = variable.name.split("/")[-1].split(":")[0]
        count = counts.get(base, 0)
        counts[base] = count + 1
        keyed.append((base if count == 0 else f"{base}_{count}", variable))
    return keyed


def _save_own_variables(self, store):
    for key, variable in _keyed_variables(self):
        store[key] = variable.numpy()


def _load_own_variables(self, store):
    keys = set(store.keys())
    if keys and all(key.isdigit() for key in keys):  # a file saved without the fix
        from tfedge.core.backend import keras

        return keras.layers.Layer.load_own_variables(self, store)
    for key, variable in _keyed_variables(self):
        if key in keys:
            variable.assign(store[key])


def patch_tfmot_saving() -> None:
    """Make tfmot's QAT layers save to and load from ``.keras`` files (idempotent).

    tfmot 0.8.1's QAT models do not survive ``model.save("x.keras")``: ``QuantizeLayer`` builds
    its variables twice when loaded, and ``QuantizeWrapperV2`` tracks a different list of
    variables after training than after loading, so Keras's positional weight loading fails
    ("expected 5 variables, but received 3"). The fix builds ``QuantizeLayer`` once and stores
    both layers' own variables by name instead of by position. Files saved before the fix (by
    position) still load the old way.

    Example:
        >>> patch_tfmot_saving()  # doctest: +SKIP
        >>> qat_model.save("qat.keras")  # doctest: +SKIP
    """
    global _patched
    if _patched:
        return
    quantize_layer = tfmot_internal("quantization.keras.quantize_layer").QuantizeLayer
    wrapper = tfmot_internal("quantization.keras.quantize_wrapper").QuantizeWrapper
    build = quantize_layer.build

    def build_once(self, input_shape):
        if getattr(self, "_tfedge_built", False):
            return
        build(self, input_shape)
        self._tfedge_built = True
        self.built = True

    quantize_layer.build = build_once
    for cls in (quantize_layer, wrapper):
        cls.save_own_variables = _save_own_variables
        cls.load_own_variables = _load_own_variables
    _patched = True


def custom_objects() -> dict:
    """``{name: class}`` for every custom object in models made by tfedge's stages.

    Covers tfmot's quantization, clustering and pruning wrappers (the same classes as its
    ``quantize_scope``, ``cluster_scope`` and ``prune_scope``), the quantizers and configs of the
    collaborative schemes (PQAT, CQAT, PCQAT). Calling it also applies :func:`patch_tfmot_saving`, without which QAT ``.keras`` files do not load.

    Returns:
        A new dict, safe to modify.

    Example:
        >>> from tfedge.core.backend import keras
        >>> model = keras.models.load_model("qat.keras", custom_objects=custom_objects())  # doctest: +SKIP
    """
    from tfedge.core.backend import tfmot

    patch_tfmot_saving()
    mot = tfmot()
    objects = {}
    for module in _MODULES:
        objects.update(_serializable_classes(tfmot_internal(module)))
    scopes = (
        mot.quantization.keras.quantize_scope(),
        mot.clustering.keras.cluster_scope(),
        mot.sparsity.keras.prune_scope(),
    )
    for scope in scopes:
        for table in getattr(scope, "custom_objects", ()):
            objects.update(table)
    return objects
