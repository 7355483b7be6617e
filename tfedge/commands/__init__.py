"""The command workflows ``tfedge.cli`` calls: one module per command (``analyze``, ``bench``,
``compare``, ``demo``, ``optimize``; ``auto`` for ``optimize --auto``, ``evaluator`` for its
measurement of a candidate, ``search_data`` for its validation split and fingerprint, and
``stage_worker`` for the child process its fine-tunes run in).
"""
