"""``python -m benchmarks.breakdown``: CPU cost per 64 B message, layer by layer.

The side-by-side suite says *how much* slower msgr is than a raw peer; this
says *where*: each piece of the per-message path timed alone, in one
process, with the thread's CPU clock (so other processes on a shared
machine disturb it little).  Pieces:

- framing: :func:`msgr_core.framing.encode_prefix` for a ``[header,
  payload]`` frame; :class:`msgr_core.framing.StreamDecoder` splitting a
  stream of such frames (fed 64 KiB at a time, as reads deliver them); and
  the raw peer's ``u32`` framing (:mod:`benchmarks.framed`) doing the same;
- header: packing the session header as msgr does (a fixed ``struct`` of
  type, flags, priority, seq, ack, cid, then the verb's UTF-8: see
  :mod:`msgr_core.message`) and unpacking it;
- session over ``loop://`` (no sockets, no framing): ``Connection.send_nowait``
  alone (session + header + link enqueue), then delivering those messages
  (event loop, loopback link, session receive, dispatch, a counting handler).

Nothing here touches msgr internals beyond the public framing module and
the public messenger API, so it keeps working as the core changes.  Each
figure is the fastest of several runs, taken round-robin across the pieces
(the least disturbed run; on a busy machine even CPU time per item varies).
"""

from __future__ import annotations

import argparse
import asyncio
import struct
from collections.abc import Callable
from time import thread_time
from typing import Any

from .common import payload_of
from .framed import U32, FrameReceiver

SIZE = 64
HEADER = (4, 0, 0, 123456, 654321, 0)  # (type, flags, priority, seq, ack, cid), then the verb
VERB = b"d"
HEADER_STRUCT = struct.Struct("!BBBQQQ")  # msgr_core.message's session header


def _once(fn: Callable[[], int]) -> float:
    """CPU ns per item of one run of ``fn`` (which returns its item count)."""
    t0 = thread_time()
    n = fn()
    return (thread_time() - t0) / n * 1e9


def _interleaved(pieces: list[tuple[str, Callable[[], int]]], repeat: int) -> list[tuple[str, float]]:
    """Each piece ``repeat`` times, round-robin (so a burst of load elsewhere
    hits all alike); the least disturbed (minimum) run of each."""
    runs: dict[str, list[float]] = {name: [] for name, _ in pieces}
    for _ in range(repeat):
        for name, fn in pieces:
            runs[name].append(_once(fn))
    return [(name, min(r)) for name, r in runs.items()]


def _stream(frames: list[list[bytes]], encode: Callable[[list[bytes]], bytes]) -> bytes:
    return b"".join(encode(f) + b"".join(f) for f in frames)


def _feed(get_buffer: Callable[[int], memoryview], buffer_updated: Callable[[int], None], data: bytes,
          chunk: int = 65536) -> None:
    mv = memoryview(data)
    pos = 0
    while pos < len(mv):
        buf = get_buffer(chunk)
        n = min(len(buf), chunk, len(mv) - pos)
        buf[:n] = mv[pos:pos + n]
        buffer_updated(n)
        pos += n


def framing_and_header(n: int, repeat: int) -> list[tuple[str, float]]:
    from msgr_core import framing

    payload = payload_of(SIZE)
    header = HEADER_STRUCT.pack(*HEADER) + VERB
    frame = [header, payload]
    limit = 64 * 1024 * 1024
    out: list[tuple[str, float]] = []

    def enc() -> int:
        ep = framing.encode_prefix
        for _ in range(n):
            ep(frame, limit)
        return n

    def raw_enc() -> int:
        pack = U32.pack
        batch: list[bytes] = []
        for _ in range(n):
            batch.append(pack(SIZE))
            batch.append(payload)
        return n

    def pack_header() -> int:
        pk = HEADER_STRUCT.pack
        h = HEADER
        for _ in range(n):
            pk(*h) + VERB
        return n

    def unpack_header() -> int:
        uf = HEADER_STRUCT.unpack_from
        size = HEADER_STRUCT.size
        verbs = {VERB: "d"}
        for _ in range(n):
            uf(header)
            verbs[header[size:]]
        return n

    msgr_stream = framing.BANNER + _stream([frame] * n, lambda f: framing.encode_prefix(f, limit))
    raw_stream = _stream([[payload]] * n, lambda f: U32.pack(len(f[0])))

    def decode() -> int:
        count = 0

        def on_frame(segs: list[Any]) -> None:
            nonlocal count
            count += 1

        dec = framing.StreamDecoder(on_frame, limit)
        _feed(dec.get_buffer, dec.buffer_updated, msgr_stream)
        return count

    def raw_decode() -> int:
        count = 0

        def on_frame(body: Any) -> None:
            nonlocal count
            count += 1

        rcv = FrameReceiver(on_frame)
        _feed(rcv.get_buffer, rcv.buffer_updated, raw_stream)
        return count

    out += _interleaved([
        ("raw framing: u32 prefix + batch append (send)", raw_enc),
        ("msgr framing: encode_prefix([header, payload]) (send)", enc),
        ("msgr header: struct pack + verb (send)", pack_header),
        ("raw framing: FrameReceiver split, 1 segment (receive)", raw_decode),
        ("msgr framing: StreamDecoder split, 2 segments (receive)", decode),
        ("msgr header: struct unpack + verb lookup (receive)", unpack_header),
    ], repeat)
    return out


def session_over_loop(n: int, repeat: int, batch: int = 1000) -> list[tuple[str, float]]:
    """send_nowait alone, then delivery, over ``loop://`` (one event loop)."""
    from msgr_core import Messenger

    async def main() -> list[tuple[str, float]]:
        rx = Messenger.from_config({"messenger": {"name": "bd-rx", "listen": ["loop://bd-rx"]}})
        tx = Messenger.from_config({"messenger": {"name": "bd-tx", "transports": ["loop"]}})
        got = 0
        target = 0
        done: asyncio.Future[None] | None = None

        def on_msg(msg: Any) -> None:
            nonlocal got
            got += 1
            if got == target and done is not None:
                done.set_result(None)

        rx.register_handler_oneway("d", on_msg)
        payload = payload_of(SIZE)
        loop = asyncio.get_running_loop()
        send_runs: list[float] = []
        recv_runs: list[float] = []
        async with rx, tx:
            conn = tx.get_connection(rx.addresses[0])
            await conn.request("msgr.ping", b"", timeout=10)
            for _ in range(repeat):
                send_cpu = recv_cpu = 0.0
                sent = 0
                while sent < n:
                    got, target = 0, batch
                    done = loop.create_future()
                    t0 = thread_time()
                    for _ in range(batch):
                        conn.send_nowait("d", payload)
                    t1 = thread_time()
                    await done
                    t2 = thread_time()
                    send_cpu += t1 - t0
                    recv_cpu += t2 - t1
                    sent += batch
                send_runs.append(send_cpu / sent * 1e9)
                recv_runs.append(recv_cpu / sent * 1e9)
        return [("msgr session: Connection.send_nowait over loop:// (send)", min(send_runs)),
                ("msgr session: deliver over loop:// to a oneway handler (receive)", min(recv_runs))]

    result: list[tuple[str, float]] = asyncio.run(main())
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.breakdown", description=__doc__.splitlines()[0])
    p.add_argument("-n", type=int, default=20000, help="messages per run (default 20000)")
    p.add_argument("--repeat", type=int, default=7, help="runs per figure; the fastest is shown (default 7)")
    args = p.parse_args(argv)
    rows = framing_and_header(args.n, args.repeat) + session_over_loop(args.n, args.repeat)
    width = max(len(r[0]) for r in rows)
    print(f"CPU time per {SIZE} B message (fastest of {args.repeat} runs of {args.n:,}):")
    for name, ns in rows:
        print(f"  {name:<{width}}  {ns / 1000:7.3f} us")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["framing_and_header", "main", "session_over_loop"]

