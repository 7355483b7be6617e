"""``python -m tfedge`` runs the command line."""

from tfedge.cli import run

run()
