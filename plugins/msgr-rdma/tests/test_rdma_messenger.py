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


@pytest.mark.parametrize("backend", ["emulated", "emulated-ipc"])
async def test_lossless_stream_survives_injected_qp_errors(backend: str) -> None:
    """Every QP goes to the error state at its 100th send WR (the
    emulation's fault injection, as a fatal async event would): links die
    with flushed WRs all through a 20,000-message stream one way and 2,000
    the other; every message arrives once, in order."""
    rdma = {"backend": backend, "buffer_size": 1024, "recv_count": 8, "emu_qp_error_after": 100}

    def config(name: str) -> dict[str, object]:
        return {"messenger": {"name": name, "listen": ["rdma://127.0.0.1:0"], "transports": ["rdma"]}, "rdma": rdma}

    got: dict[str, list[int]] = {"a": [], "b": []}
    done = {"a": asyncio.Event(), "b": asyncio.Event()}
    total = {"b": 20_000, "a": 2_000}

    def sink(me: str) -> object:
        def on(msg: msgr_core.Message) -> None:
            got[me].append(int.from_bytes(msg.payload[:8], "big"))
            if len(got[me]) >= total[me]:
                done[me].set()

        return on

    a = msgr_core.Messenger.from_config(config("a"))
    b = msgr_core.Messenger.from_config(config("b"))
    a.register_handler_oneway("seq", sink("a"))
    b.register_handler_oneway("seq", sink("b"))
    async with asyncio.timeout(180), a, b:
        conn = a.get_connection(b.addresses[0])
        await conn.request("msgr.ping", b"", timeout=30)
        back = b.get_connection("a")
        for i in range(total["b"]):
            await conn.send("seq", i.to_bytes(8, "big") + b"payload!")
            if i % 10 == 0:
                await back.send("seq", (i // 10).to_bytes(8, "big"))
                await asyncio.sleep(0)
        await done["b"].wait()
        await done["a"].wait()
        assert got["b"] == list(range(total["b"]))
        assert got["a"] == list(range(total["a"]))
        assert conn.stats["reconnects"] >= 10, conn.stats
