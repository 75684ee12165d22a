"""Connection policies (Ceph's set): what a session does when its link fails.

==================  ======================================================
policy              on link fault
==================  ======================================================
``lossy_client``    session dropped, pending messages failed, both ends
                    notified (``handle_reset``)
``stateless_server`` the accepting side of ``lossy_client``
``lossless_client`` reconnect with backoff, resume, replay unacked
``stateful_server`` the accepting side of ``lossless_client``
``lossless_peer``   either side may connect; races resolve to one link
==================  ======================================================

Policies are chosen per *peer type* (``[policy]`` in config, with a
``default``).  Both ends of a session must agree on its *mode*: a
``lossy_client`` may only talk to a ``stateless_server``, and so on; the
handshake refuses a mismatch with a message naming both policies.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["POLICIES", "Policy", "get_policy"]


@dataclass(frozen=True, slots=True)
class Policy:
    """One connection policy.

    :ivar name: as written in config.
    :ivar mode: ``"lossy"``, ``"lossless"`` (client/server) or ``"peer"``;
        both ends of a session must have the same mode.
    :ivar lossy: a link fault resets the session.
    :ivar server: never reconnects (the peer comes back to it).
    :ivar standby: an idle session does not reconnect until it has
        something to send (``lossless_peer``).
    :ivar resetcheck: a peer with a new incarnation resets the session.
    """

    name: str
    mode: str
    lossy: bool
    server: bool
    standby: bool = False
    resetcheck: bool = True


POLICIES: dict[str, Policy] = {
    p.name: p
    for p in (
        Policy("lossy_client", "lossy", lossy=True, server=False),
        Policy("stateless_server", "lossy", lossy=True, server=True),
        Policy("lossless_client", "lossless", lossy=False, server=False),
        Policy("stateful_server", "lossless", lossy=False, server=True),
        Policy("lossless_peer", "peer", lossy=False, server=False, standby=True),
    )
}



def get_policy(name: str) -> Policy:
    """The policy called ``name``.  :raises KeyError: unknown name."""
    return POLICIES[name]
