"""Workers for ``raw-pyzmq`` (blocking PUSH/PULL) and ``raw-zmq-asyncio``.

Messages are single-part; a one-byte message is a marker (END ends a
round, STOP ends the receiver).  Large messages go out with
``copy=False`` and are received with ``copy=False`` (zero-copy frames).
"""

from __future__ import annotations

from time import perf_counter
from typing import Any

from .common import BATCH, END, STOP, OnewayCounter, async_sender_loop, blocking_sender_loop, payload_of
from .harness import Control, run_async

LARGE = 65536
QUEUE_BYTES = 64 * 1024 * 1024  # what msgr queues per session by default (limits.max_queued_bytes)


def _hwm(sock: Any, size: int) -> None:
    """Bound the queue like the other implementations: by bytes, not by a
    count of 1,000 messages (16 GiB of 16 MiB ones)."""
    import zmq

    hwm = max(2, min(1000, QUEUE_BYTES // size))
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.setsockopt(zmq.RCVHWM, hwm)


def _bind(sock: Any) -> str:
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    return f"tcp://127.0.0.1:{port}"


def blocking_receiver(ctl: Control, params: dict[str, Any]) -> None:
    import zmq

    copy = params["size"] < LARGE
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PULL)
    sock.setsockopt(zmq.LINGER, 0)
    _hwm(sock, params["size"])
    ctl.send("ready", {"zmq_address": _bind(sock)})
    counter = OnewayCounter(ctl)
    on_body = counter.on_body
    recv = sock.recv
    while True:
        msg = recv(copy=copy)
        if len(msg) == 1:
            if bytes(msg) == STOP:
                break
            counter.end()
        else:
            on_body(msg)
    sock.close()
    ctx.term()


def blocking_sender(ctl: Control, params: dict[str, Any]) -> None:
    import zmq

    size = params["size"]
    copy = size < LARGE
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    _hwm(sock, size)
    sock.connect(params["zmq_address"])
    payload = payload_of(size)
    send = sock.send

    def send_round(seconds: float) -> int:
        sent = 0
        deadline = perf_counter() + seconds
        while perf_counter() < deadline:
            for _ in range(BATCH if copy else 1):
                send(payload, copy=copy)
            sent += BATCH if copy else 1
        send(END)
        return sent

    blocking_sender_loop(ctl, send_round)
    send(STOP)
    sock.close(linger=5000)
    ctx.term()


def asyncio_receiver(ctl: Control, params: dict[str, Any]) -> None:
    import zmq
    import zmq.asyncio

    copy = params["size"] < LARGE

    async def main() -> None:
        ctx = zmq.asyncio.Context()
        sock = ctx.socket(zmq.PULL)
        sock.setsockopt(zmq.LINGER, 0)
        _hwm(sock, params["size"])
        ctl.send("ready", {"zmq_address": _bind(sock)})
        counter = OnewayCounter(ctl)
        on_body = counter.on_body
        recv = sock.recv
        while True:
            msg = await recv(copy=copy)
            if len(msg) == 1:
                if bytes(msg) == STOP:
                    break
                counter.end()
            else:
                on_body(msg)
        sock.close()
        ctx.term()

    run_async(main, params["loop"])


def asyncio_sender(ctl: Control, params: dict[str, Any]) -> None:
    import zmq
    import zmq.asyncio

    size = params["size"]
    copy = size < LARGE

    async def main() -> None:
        ctx = zmq.asyncio.Context()
        sock = ctx.socket(zmq.PUSH)
        _hwm(sock, size)
        sock.connect(params["zmq_address"])
        payload = payload_of(size)
        send = sock.send

        async def send_round(seconds: float) -> int:
            sent = 0
            deadline = perf_counter() + seconds
            while perf_counter() < deadline:
                for _ in range(BATCH if copy else 1):
                    await send(payload, copy=copy)
                sent += BATCH if copy else 1
            await send(END)
            return sent

        await async_sender_loop(ctl, send_round)
        await send(STOP)
        sock.close(linger=5000)
        ctx.term()

    run_async(main, params["loop"])
