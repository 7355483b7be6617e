"""What tfedge shows: the HTML page (``page``), its figures (``plots``), the compression
report (``compression``: requested against achieved sparsity and distinct values per stage) and
the search's outputs (``search``: the chosen model, report and recipe of ``optimize --auto``).
"""
