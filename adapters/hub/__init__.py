"""The national hub's protocol (HUB-PROTOCOL.md), spoken by a node: :mod:`adapters.hub.app`
serves it to DMS built on the national SDK; :mod:`adapters.hub.wire` holds its wire details and
:mod:`adapters.hub.operations` maps its operations onto the node's own model."""
