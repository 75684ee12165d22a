"""Handshake authentication over every network transport installed.

``tests/test_sec_auth.py`` covers the exchange in depth over ``loop://``
and ``tcp://``; this module proves the claim of the security issue on each
real transport — ``tcp``, ``unix``, ``tls`` (authentication on top of
mutual TLS), ``zmq+tcp`` and ``zmq+ipc``: a peer without the key, or with
another one, cannot call a verb on a messenger that requires
authentication, while a peer with the key can.  Each transport runs with
the settings its conformance kit uses (``Transport.test_settings``: for
``tls``, a throwaway CA and certificate).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from msgr_core import Messenger
from msgr_core.auth import generate_key
from msgr_core.errors import PeerAuthenticationFailed
from msgr_core.registry import load_transport_class

KEY = generate_key()
OTHER = generate_key()
SCHEMES = ["tcp", "unix", "tls", "zmq+tcp", "zmq+ipc"]
_n = itertools.count()


def _transport_config(scheme: str, tmp: Path) -> tuple[str, dict[str, Any]]:
    """The listen address and the config sections ``scheme``'s kit uses."""
    cls = load_transport_class(scheme)
    template = cls.test_addresses.get(scheme, f"{scheme}://127.0.0.1:0")
    address = template.format(tmp=tmp, n=next(_n))
    settings = dict(cls.test_settings.get(scheme, {}))
    return address, ({cls.config_section: settings} if settings and cls.config_section else {})


@pytest.fixture(params=SCHEMES)
def scheme(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def server(scheme: str, tmp_path: Path) -> AsyncIterator[tuple[Messenger, list[Any], dict[str, Any]]]:
    address, sections = _transport_config(scheme, tmp_path)
    ms = Messenger.from_config({"messenger": {"name": "server", "type": "osd", "listen": [address]},
                                "auth": {"cluster_key": KEY}, **sections})
    calls: list[Any] = []
    ms.register_handler("secret", lambda msg: calls.append(msg.payload) or b"the secret")
    async with ms:
        yield ms, calls, sections


def _client(scheme: str, sections: dict[str, Any], **auth: Any) -> Messenger:
    return Messenger.from_config({"messenger": {"name": "client.1", "type": "client", "transports": [scheme]},
                                  "policy": {"default": "lossy_client"}, "auth": auth, **sections})


async def test_peer_with_the_key_calls_the_verb(
        scheme: str, server: tuple[Messenger, list[Any], dict[str, Any]]) -> None:
    srv, calls, sections = server
    async with _client(scheme, sections, cluster_key=KEY) as client:
        assert await client.send_message("secret", srv.addresses[0], b"hi", timeout=10) == b"the secret"
    assert calls == [b"hi"]
    assert srv.stats["authenticated"] == 1


@pytest.mark.parametrize("auth", [{}, {"cluster_key": OTHER}], ids=["no key", "wrong key"])
async def test_peer_without_the_key_cannot_call_a_verb(
        scheme: str, server: tuple[Messenger, list[Any], dict[str, Any]], auth: dict[str, Any],
        watch_rejections: Callable[[Messenger], asyncio.Event]) -> None:
    srv, calls, sections = server
    rejected = watch_rejections(srv)
    async with _client(scheme, sections, **auth) as client:
        with pytest.raises(PeerAuthenticationFailed, match="authentication failed"):
            await client.send_message("secret", srv.addresses[0], b"let me in", timeout=10)
    await asyncio.wait_for(rejected.wait(), 10)
    assert calls == []
    assert srv.stats["rejected"] == {"auth_failed": 1}
    assert srv.connections == []
