"""What tfedge shows: the HTML page (``page``), its figures (``plots``) and the compression
report (``compression``: requested against achieved sparsity and distinct values per stage).
"""
