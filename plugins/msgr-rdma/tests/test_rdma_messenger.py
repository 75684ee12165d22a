"""Two messengers over rdma:// on the emulated backend, configured the way
a user does it: ``[rdma] backend = "emulated"``."""

from __future__ import annotations

import asyncio

import pytest

import msgr_core
from msgr_core.errors import RemoteError


def _config(name: str) -> dict[str, object]:
    return {
        "messenger": {"name": name, "listen": ["rdma://127.0.0.1:0"], "transports": ["rdma"]},
        "rdma": {"backend": "emulated", "buffer_size": 1024, "recv_count": 8},
    }


async def test_messenger_roundtrip_over_emulated_rdma() -> None:
    messenger_cls = getattr(msgr_core, "Messenger", None)
    if messenger_cls is None:
        pytest.skip("msgr_core has no Messenger")
    a = messenger_cls.from_config(_config("rdma-a"))
    b = messenger_cls.from_config(_config("rdma-b"))

    def fail(msg: object) -> object:
        raise ValueError("handler failure")

    async with asyncio.timeout(30):
        async with a, b:
            b.register_handler("echo", lambda msg: msg.payload)
            b.register_handler("fail", fail)
            peer = b.addresses[0]
            assert peer.startswith("rdma://")
            for payload in (b"x", bytes(range(256)) * 1024):  # one small, one by rendezvous
                assert await a.send_message("echo", peer, payload, timeout=10) == payload
            payloads = [b"%d" % i for i in range(100)]
            replies = await asyncio.gather(*(a.send_message("echo", peer, x, timeout=10) for x in payloads))
            assert list(replies) == payloads
            with pytest.raises(RemoteError):
                await a.send_message("fail", peer, b"x", timeout=10)
