"""The device harness: where a ``.tflite`` file runs and is measured.

``runner`` is the one file copied to a device and run with plain ``python3`` (stdlib, numpy and
an interpreter; it imports nothing of tfedge). ``protocol`` holds the :class:`Device` protocol
and the local device, ``kinds`` the registry from a URL scheme to its device (``parse_device``),
``ssh`` the ssh devices, ``fleet`` many devices at once, ``arrays`` the data files the runner
reads.
"""
