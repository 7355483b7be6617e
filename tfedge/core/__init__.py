"""tfedge's ground floor: what every other layer imports, and nothing above it.

Errors, atomic files, bounded YAML, the one Keras import point, data sets and streams, model
loading, the ``.tflite`` reader and inspector, and the EdgeTPU operator rules. Nothing here
imports ``tfedge.models``, ``tfedge.converters`` or the application folders.
"""
