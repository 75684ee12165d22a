"""Property tests (Hypothesis) over what a hostile peer controls: the stream
decoder, message headers, and the handshake state machine.

Settings are modest (``max_examples`` <= 200, no deadline) so CI stays
fast; the atheris harness under ``fuzz/`` is for long runs.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import struct
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from msgr_core import Messenger
from msgr_core import message as m
from msgr_core.auth import NONCE_BYTES, generate_key
from msgr_core.errors import FrameTooLarge, ProtocolError
from msgr_core.framing import BANNER, MAX_SEGMENTS, StreamDecoder, encode_prefix
from msgr_core.testing import RecordingHandler
from msgr_core.transport import Buffer

ROOT = Path(__file__).resolve().parents[1]
MAX_FRAME = 4096
_HEADER_MAX = 6 + 4 * MAX_SEGMENTS
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# -- the stream decoder --------------------------------------------------------------


def _splits(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, last = [], 0
    for p in points:
        out.append(data[last:p])
        last = p
    out.append(data[last:])
    return [c for c in out if c]


def _feed_checked(dec: StreamDecoder, chunks: list[bytes]) -> BaseException | None:
    """Feed chunks through the BufferedProtocol interface; check memory stays bounded."""
    for chunk in chunks:
        mv = memoryview(chunk)
        while mv:
            target = dec.get_buffer()
            assert len(target) > 0
            n = min(len(target), len(mv))
            target[:n] = mv[:n]
            mv = mv[n:]
            try:
                dec.buffer_updated(n)
            except (ProtocolError, FrameTooLarge) as exc:
                return exc
            # what a peer can make the decoder hold is bounded by the limits
            assert dec.pending <= MAX_FRAME + _HEADER_MAX
            assert len(dec._buf) <= 2 * (MAX_FRAME + _HEADER_MAX) + 64 * 1024
    return None


@FUZZ
@given(data=st.binary(max_size=3000), cuts=st.lists(st.integers(min_value=0), max_size=12),
       banner=st.booleans())
def test_decoder_survives_arbitrary_bytes(data: bytes, cuts: list[int], banner: bool) -> None:
    """Any bytes, split anywhere: frames or ProtocolError/FrameTooLarge, nothing else."""
    frames: list[list[Buffer]] = []
    dec = StreamDecoder(frames.append, MAX_FRAME, buffer_size=64 * 1024, direct_threshold=1024)
    stream = (BANNER + data) if banner else data
    _feed_checked(dec, _splits(stream, cuts))
    for frame in frames:
        assert 1 <= len(frame) <= MAX_SEGMENTS
        assert sum(len(memoryview(b)) for b in frame) <= MAX_FRAME


_segment = st.binary(max_size=1500)


@FUZZ
@given(frames=st.lists(st.lists(_segment, min_size=1, max_size=5), max_size=6),
       cuts=st.lists(st.integers(min_value=0), max_size=12),
       tail=st.binary(max_size=64))
def test_decoder_round_trips_valid_frames_then_garbage(
        frames: list[list[bytes]], cuts: list[int], tail: bytes) -> None:
    """Valid frames, split anywhere, come out whole and in order; garbage
    after them raises a typed error or waits for more, nothing else."""
    limit = 5 * 1500
    stream = BANNER
    expect = []
    for f in frames:
        stream += encode_prefix(f, limit) + b"".join(f)
        expect.append(f)
    got: list[list[Buffer]] = []
    dec = StreamDecoder(got.append, limit, buffer_size=4096, direct_threshold=2048)
    error = _feed_checked_limit(dec, _splits(stream + tail, cuts), limit)
    assert [[bytes(b) for b in f] for f in got[: len(expect)]] == expect
    if error is not None:
        assert isinstance(error, ProtocolError | FrameTooLarge)


def _feed_checked_limit(dec: StreamDecoder, chunks: list[bytes], limit: int) -> BaseException | None:
    for chunk in chunks:
        try:
            dec.feed(chunk)
        except (ProtocolError, FrameTooLarge) as exc:
            return exc
        assert dec.pending <= limit + _HEADER_MAX
    return None


@FUZZ
@given(total=st.integers(min_value=0, max_value=2**32 - 1), nseg=st.integers(min_value=0, max_value=2**16 - 1),
       lengths=st.lists(st.integers(min_value=0, max_value=2**32 - 1), max_size=4))
def test_decoder_rejects_inconsistent_prefixes(total: int, nseg: int, lengths: list[int]) -> None:
    """A prefix announcing too much, too many segments, or lengths that do
    not add up is refused as soon as it is seen; it never allocates the
    announced size above the limit."""
    prefix = struct.pack("!IH", total, nseg) + b"".join(struct.pack("!I", n) for n in lengths)
    dec = StreamDecoder(lambda f: None, MAX_FRAME, expect_banner=False)
    try:
        dec.feed(prefix)
    except FrameTooLarge:
        assert total > MAX_FRAME
        return
    except ProtocolError:
        return
    assert total <= MAX_FRAME and 1 <= nseg <= MAX_SEGMENTS
    assert dec.pending <= len(prefix)


# -- message headers and the handshake state machine ------------------------------------

KEY = generate_key()

_small_int = st.integers(min_value=-3, max_value=2**20)
_anything = st.one_of(st.none(), st.booleans(), _small_int, st.text(max_size=8), st.binary(max_size=8),
                      st.floats(allow_nan=False), st.lists(st.integers(-2**63, 2**64 - 1), max_size=3))


def _hello(auth: Any, name: Any, mode: Any, version: Any) -> dict[str, Any]:
    hello: dict[str, Any] = {"v": version, "name": name, "type": "client", "incarnation": 1, "features": [],
                             "policy": "lossy_client", "mode": mode, "addrs": [], "sid": 5, "peer_sid": 0,
                             "peer_inc": 0, "in_seq": 0}
    if auth is not None:
        hello["auth"] = auth
    return hello


_hellos = st.builds(
    _hello,
    auth=st.one_of(st.none(), st.binary(min_size=NONCE_BYTES, max_size=NONCE_BYTES), _anything),
    name=st.one_of(st.just("fuzzer"), st.text(max_size=300), _anything),
    mode=st.sampled_from(["lossy", "lossless", "peer", "bogus"]),
    version=st.one_of(st.just(m.PROTOCOL_VERSION), _anything),
)
_auths = st.fixed_dictionaries({}, optional={"proof": st.one_of(st.binary(max_size=40), _anything),
                                             "nonce": st.binary(max_size=40), "name": _anything})
_bodies = st.one_of(_hellos, _auths, _anything, st.dictionaries(st.text(max_size=5), _anything, max_size=4))
_mtypes = st.one_of(st.integers(min_value=0, max_value=15), _anything)


def _header(fields: list[Any]) -> bytes:
    """The session header of ``fields`` (type, seq, ack, flags, priority, cid,
    verb) when they fit its struct; otherwise bytes that do not parse as one
    (too short, or a verb that is not UTF-8) or parse as odd values."""
    try:
        return m.pack_header(*fields)
    except (struct.error, TypeError, AttributeError):
        return msgpack.packb(fields)


@st.composite
def _frames(draw: st.DrawFn) -> list[Buffer]:
    """One frame a hostile peer might send: mostly well-formed headers with
    odd values, sometimes raw bytes, sometimes extra or missing segments."""
    if draw(st.integers(0, 9)) == 0:
        head = draw(st.binary(max_size=40))
    else:
        fields = [draw(_mtypes), draw(st.one_of(_small_int, _anything)), draw(st.one_of(_small_int, _anything)),
                  draw(st.sampled_from([0, 1, 1, 2, 3])), draw(st.one_of(st.integers(0, 3), _anything)),
                  draw(st.one_of(_small_int, _anything)), draw(st.one_of(st.text(max_size=10), _anything))]
        if draw(st.integers(0, 9)) == 0:
            fields = fields[: draw(st.integers(0, 6))]
        head = _header(fields)
    shape = draw(st.integers(0, 9))
    if shape == 0:
        return [head]
    body = draw(st.binary(max_size=64)) if shape == 1 else msgpack.packb(draw(_bodies))
    extra = draw(st.lists(st.binary(max_size=16), max_size=2)) if shape == 2 else []
    return [head, body, *extra]


class _Bench:
    """A server requiring authentication, a legitimate client with an open
    session to it, and a helper to dial raw links."""

    def __init__(self, scheme: str) -> None:
        self.scheme = scheme
        self.loop_errors: list[dict[str, Any]] = []

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, ctx: self.loop_errors.append(ctx))
        listen = {"loop": "loop://fuzz-server", "tcp": "tcp://127.0.0.1:0"}[self.scheme]
        self.server = Messenger.from_config({
            "messenger": {"name": "server", "listen": [listen]}, "auth": {"cluster_key": KEY},
            "limits": {"handshake_timeout": 30.0, "max_frame_bytes": 64 * 1024}})
        self.calls = 0

        def handler(msg: Any) -> Any:
            self.calls += 1
            return msg.payload

        for verb in ("", "secret", "msgr.ping", "fuzz"):
            self.server.register_handler(verb, handler)
            self.server.register_handler_oneway(verb + "1", handler)
        self.client = Messenger.from_config({"messenger": {"name": "good", "transports": [self.scheme]},
                                             "auth": {"cluster_key": KEY}})
        await self.server.start()
        await self.client.start()
        self.address = self.server.addresses[0]
        self.good = self.client.get_connection(self.address)
        assert (await self.good.request("fuzz", b"hello", timeout=10)).payload == b"hello"
        self.rejections = 0
        self.rejected = asyncio.Event()
        count = self.server._count_rejected

        def counting(reason: str) -> None:
            count(reason)
            self.rejections += 1
            self.rejected.set()

        self.server._count_rejected = counting  # type: ignore[method-assign]

    async def attack(self, frames: list[list[Buffer]]) -> None:
        before_calls, before_rejections = self.calls, self.rejections
        self.rejected.clear()
        peer = RecordingHandler("hostile peer")
        await self.client._transport(self.scheme).connect(self.address, peer)
        assert peer.link is not None
        for frame in frames:
            if peer.link.is_closing():
                break
            peer.link.send(frame)
        # If the server has not closed it yet, the peer hangs up: either way
        # the server ends with this link rejected (counted exactly once).
        if not peer.link.is_closing():
            peer.link.close()
        await asyncio.wait_for(peer.lost, 10)
        while self.rejections == before_rejections:
            await asyncio.wait_for(self.rejected.wait(), 10)
            self.rejected.clear()
        assert self.rejections == before_rejections + 1
        assert self.calls == before_calls, "a verb ran for an unauthenticated peer"
        assert not self.server._accepted
        assert [c.peer_name for c in self.server.connections] == ["good"]
        assert not self.loop_errors, self.loop_errors
        # the legitimate session is unaffected
        assert (await self.good.request("fuzz", b"still here", timeout=10)).payload == b"still here"
        for frame in peer.frames:  # nothing but handshake frames ever came back
            assert m.unpack_header(frame[0])[0] in (m.AUTH, m.REFUSE)

    async def stop(self) -> None:
        await self.client.stop()
        await self.server.stop()


@pytest.mark.parametrize("scheme", ["loop", "tcp"])
def test_handshake_state_machine_survives_hostile_frames(scheme: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.CRITICAL, logger="msgr")  # thousands of expected warnings
    # loop_factory: the runner then leaves the policy's current loop alone
    # (a plain Runner() sets it to None on close, orphaning the loop that
    # looptime's pytest hook made for this sync test: an unclosed-socket warning)
    with asyncio.Runner(loop_factory=asyncio.new_event_loop) as runner:
        bench = _Bench(scheme)
        runner.run(bench.start())
        try:
            @settings(max_examples=100, deadline=None,
                      suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
            @given(frames=st.lists(_frames(), min_size=1, max_size=5))
            def attack(frames: list[list[Buffer]]) -> None:
                runner.run(bench.attack(frames))

            attack()
        finally:
            runner.run(bench.stop())
    assert bench.server.stats["rejected"]


def test_fuzz_harness_target_runs_without_atheris() -> None:
    """The atheris harness's target function works on plain inputs (so it cannot rot)."""
    spec = importlib.util.spec_from_file_location("fuzz_msgr", ROOT / "fuzz" / "fuzz_msgr.py")
    assert spec is not None and spec.loader is not None
    fuzz_msgr = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fuzz_msgr)
    hello = {"v": m.PROTOCOL_VERSION, "name": "x", "type": "t", "incarnation": 1, "mode": "lossy",
             "policy": "lossy_client", "addrs": [], "sid": 1, "peer_sid": 0, "in_seq": 0}
    frame = [m.pack_header(m.HELLO, 0, 0, 1, 0, 0, ""), msgpack.packb(hello)]
    request = [m.pack_header(m.REQ, 1, 0, 0, 0, 1, "a"), b"x"]
    stream = encode_prefix(frame, 1 << 16) + b"".join(frame) + encode_prefix(request, 99) + b"".join(request)
    inputs = (b"\x01" + stream, b"\x03" + encode_prefix(request, 99) + b"".join(request), b"", b"\x00", BANNER,
              BANNER + encode_prefix([b"ab", b"c"], 100) + b"abc", os.urandom(4096),
              b"\x01" + m.pack_header(1, 0, 0, 1, 0, 0, "") * 3, bytes(range(256)) * 8)
    try:
        for data in inputs:
            fuzz_msgr.test_one_input(data)
    finally:
        fuzz_msgr.shutdown()
