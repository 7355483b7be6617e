"""The command workflows ``tfedge.cli`` calls: one module per command (``analyze``, ``bench``,
``compare``, ``demo``, ``optimize``; ``auto`` for ``optimize --auto`` and ``stage_worker`` for
the child process its fine-tunes run in).
"""
