"""Acceptance fixtures: a real node process (see harness.py)."""

from harness import node, node_pki  # noqa: F401  (fixtures, found by pytest here)
