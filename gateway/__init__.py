"""The inter-agency document-exchange gateway: signed edXML envelopes relayed node to node."""

from __future__ import annotations

__version__ = "0.1.0"
