"""What tfedge shows: the HTML page (``page``; its ``inputs`` read and checked, its ``tables``,
``figures`` and per-layer ``analyses`` sections), its matplotlib figures (``plots``), the
compression report (``compression``: requested against achieved sparsity and distinct values per
stage, and for a model of your own loop with ``check_finalized``) and the search's outputs
(``search``: the chosen model, report and recipe of ``optimize --auto``).
"""
