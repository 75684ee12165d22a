"""Stream framing: boundaries kept at any split, bad input typed, memory bounded."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from msgr_core.errors import FrameTooLarge, ProtocolError
from msgr_core.framing import BANNER, MAX_SEGMENTS, StreamDecoder, encode_prefix

LIMIT = 1 << 24


def _wire(frames: list[list[bytes]]) -> bytes:
    return BANNER + b"".join(encode_prefix(f, LIMIT) + b"".join(f) for f in frames)


def _decode(data: bytes, chunks: list[int], **kw: int) -> list[list[bytes]]:
    out: list[list[bytes]] = []
    dec = StreamDecoder(lambda f: out.append([bytes(b) for b in f]), LIMIT, **kw)
    pos = 0
    for n in chunks:
        dec.feed(data[pos : pos + n])
        pos += n
    dec.feed(data[pos:])
    return out


frames_st = st.lists(st.lists(st.binary(max_size=300), min_size=1, max_size=5), max_size=20)


@given(frames=frames_st, chunks=st.lists(st.integers(1, 97), max_size=60))
@settings(max_examples=200, deadline=None)
def test_any_split_gives_the_same_frames(frames: list[list[bytes]], chunks: list[int]) -> None:
    assert _decode(_wire(frames), chunks, direct_threshold=64) == frames


def test_large_frames_are_received_without_copy_into_their_own_buffer() -> None:
    big = random.Random(1).randbytes(300_000)
    frames = [[b"h", big], [b"small"], [b"x", big[:70_000], b"y"]]
    out: list[list[object]] = []
    dec = StreamDecoder(out.append, LIMIT)
    data = _wire(frames)
    for i in range(0, len(data), 65536):
        dec.feed(data[i : i + 65536])
    assert [[bytes(b) for b in f] for f in out] == frames
    assert isinstance(out[0][1], memoryview)  # a view of the frame's own buffer
    assert out[0][1].obj is not out[2][1].obj  # never reused


def test_received_small_buffers_survive_later_frames() -> None:
    out: list[list[object]] = []
    dec = StreamDecoder(out.append, LIMIT)
    dec.feed(_wire([[b"first"]]))
    kept = out[0][0]
    dec.feed(encode_prefix([b"second!"], LIMIT) + b"second!")
    assert kept == b"first"


@given(garbage=st.binary(min_size=1, max_size=200))
@settings(max_examples=200, deadline=None)
def test_garbage_raises_a_typed_error_or_waits_never_anything_else(garbage: bytes) -> None:
    dec = StreamDecoder(lambda f: None, 4096)
    try:
        dec.feed(garbage)
    except (ProtocolError, FrameTooLarge):
        return
    # undecided input is only ever a prefix of the banner, held in bounded memory
    assert BANNER.startswith(garbage[: len(BANNER)])
    assert dec.pending <= len(garbage)


@given(body=st.binary(max_size=64), lengths=st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=4))
@settings(max_examples=200, deadline=None)
def test_inconsistent_or_oversize_headers_are_refused(body: bytes, lengths: list[int]) -> None:
    import struct

    total = sum(lengths) & 0xFFFFFFFF
    head = struct.pack("!IH", total, len(lengths)) + struct.pack(f"!{len(lengths)}I", *lengths)
    dec = StreamDecoder(lambda f: None, 1 << 20)
    if total > 1 << 20 or sum(lengths) != total:
        with pytest.raises((FrameTooLarge, ProtocolError)):
            dec.feed(BANNER + head + body)


def test_encode_refuses_oversize_and_bad_shapes() -> None:
    with pytest.raises(FrameTooLarge) as ei:
        encode_prefix([bytes(11)], 10)
    assert ei.value.size == 11 and ei.value.limit == 10
    with pytest.raises(ValueError):
        encode_prefix([], 10)
    with pytest.raises(ValueError):
        encode_prefix([b""] * (MAX_SEGMENTS + 1), 10)


def test_zero_segment_frame_is_a_protocol_error() -> None:
    import struct

    dec = StreamDecoder(lambda f: None, 100)
    with pytest.raises(ProtocolError, match="segments"):
        dec.feed(BANNER + struct.pack("!IH", 0, 0))


def test_two_segment_lengths_that_disagree_with_the_total_are_refused() -> None:
    import struct

    dec = StreamDecoder(lambda f: None, 1 << 20)
    # whole frame present, the fast path for two segments must check it too
    with pytest.raises(ProtocolError, match="sum to"):
        dec.feed(BANNER + struct.pack("!IHII", 8, 2, 2, 2) + bytes(8))


def test_buffer_starts_small_and_grows_under_load() -> None:
    out: list[list[bytes]] = []
    dec = StreamDecoder(lambda f: out.append([bytes(b) for b in f]), LIMIT, buffer_size=256 * 1024)
    assert len(dec.get_buffer()) <= 4 * 1024
    frames = [[b"h", bytes(1000)]] * 2000
    data = _wire(frames)
    pos = 0
    sizes = set()
    while pos < len(data):
        target = dec.get_buffer()
        sizes.add(len(dec._buf))
        n = min(len(target), len(data) - pos)
        target[:n] = data[pos : pos + n]
        pos += n
        dec.buffer_updated(n)
    assert out == frames
    assert max(sizes) == 256 * 1024


def test_a_large_frame_buffer_is_reused_only_once_nothing_refers_to_it() -> None:
    got: list[list[memoryview]] = []
    dec = StreamDecoder(got.append, LIMIT, direct_threshold=1024)
    first, second, third = (bytes([n]) * 100_000 for n in (1, 2, 3))
    dec.feed(_wire([[b"h", first]]))
    held = got.pop()
    dec.feed(_wire([[b"h", second]])[len(BANNER):])
    # the first frame is still referenced: the second got a buffer of its own
    assert bytes(held[1]) == first
    assert held[1].obj is not got[0][1].obj
    buffer_id = id(got[0][1].obj)
    got.clear()  # every view of the second frame dropped: its buffer is free
    dec.feed(_wire([[b"h", third]])[len(BANNER):])
    assert id(got[0][1].obj) == buffer_id
    assert bytes(got[0][1]) == third and bytes(held[1]) == first
