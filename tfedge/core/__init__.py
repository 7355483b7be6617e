"""tfedge's ground floor: what every other layer imports, and nothing above it.

Errors, atomic files, bounded YAML, the one Keras import point, data sets and streams, model
loading, the ``.tflite`` reader and inspector, and the EdgeTPU operator rules. Nothing here
imports ``tfedge.models``, ``tfedge.converters`` or the application folders, with one exception:
loading a ``.keras`` file that holds tfedge's Keras 3 QAT layers imports the module of
``tfedge.models`` that defines them (named in ``tfedge.core.loading``).
"""
