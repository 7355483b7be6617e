"""tfedge: take a Keras model to a small, fast, fully-int8 TFLite model and prove it on a device.

Importing ``tfedge`` does not import TensorFlow; the heavy parts load when they are used.

Example:
    >>> import tfedge
    >>> tfedge.__version__
    '0.1.0'
"""

from tfedge.version import __version__

__all__ = ["__version__", "analyze", "auto_optimize"]


def __getattr__(name):
    # Lazy: ``import tfedge`` must not import TensorFlow.
    if name == "analyze":
        from tfedge.analysis import analyze

        return analyze
    if name == "auto_optimize":
        from tfedge.search import auto_optimize

        return auto_optimize
    raise AttributeError(f"module 'tfedge' has no attribute {name!r}")
