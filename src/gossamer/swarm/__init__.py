"""Membership and the peer runtime over real networks.

- ``Coordinator`` (``coordinator``): membership, heartbeats, rounds, groups,
  agreed state hashes; no tensor data.
- ``Peer`` (``peer``): wraps a model and loss; joins, fetches and verifies
  state, trains, survives crashes of others, leaves cleanly.
- ``protocol``: the coordinator's request/response protocol.
- ``state``: state transfer between peers over the TCP transport.
- ``cli``: ``gossamer coordinator`` / ``gossamer peer``.

Names are imported lazily so that the coordinator does not pay for torch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Coordinator", "Peer", "PeerReport"]


def __getattr__(name: str) -> Any:
    if name == "Coordinator":
        from .coordinator import Coordinator

        return Coordinator
    if name in ("Peer", "PeerReport"):
        from . import peer

        return getattr(peer, name)
    raise AttributeError(f"module 'gossamer.swarm' has no attribute {name!r}")
