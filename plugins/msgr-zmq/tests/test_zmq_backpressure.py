"""Back-pressure instead of drops at ZeroMQ's high-water mark: frames to a
receiver that stopped reading pile up in the link's queue (reported, with
pause_writing), and all arrive, in order, once it reads again."""

from __future__ import annotations

import struct

import pytest

from msgr_core.errors import LinkClosed

N = 100_000
SEQ = struct.Struct("!I")
SMALL_HWM = {"sndhwm": 8, "rcvhwm": 8}


def _frames(n: int, size: int) -> list[list[bytes]]:
    pad = b"p" * size
    return [[SEQ.pack(i), pad] for i in range(n)]


def _check_in_order(frames: list[list[bytes]], n: int, size: int) -> None:
    assert len(frames) == n
    for i, f in enumerate(frames):
        assert len(f) == 2 and SEQ.unpack(f[0])[0] == i and len(f[1]) == size, (i, f[0])


@pytest.mark.parametrize("paused_end", ["server", "client"])
async def test_paused_receiver_gets_everything_in_order(make_transport, make_rec, make_accepting, paused_end) -> None:
    size = 200
    accepting = make_accepting()
    listener = await make_transport(settings=SMALL_HWM).listen("zmq+tcp://127.0.0.1:0", accepting)
    crec = make_rec()
    link = await make_transport(settings=SMALL_HWM).connect(listener.address, crec)
    srec = await accepting.get(0)
    sender, receiver = (crec, srec) if paused_end == "server" else (srec, crec)
    receiver.link.pause_reading()
    sent = _frames(N, size)
    for i in range(0, N, 1000):
        sender.link.send_many(sent[i : i + 1000])
    # nothing blocks and nothing is refused; the queue reports the backlog
    high = link_high = 1024 * 1024
    assert sender.link.write_buffer_size() > high
    await sender.until(lambda: sender.pauses == 1)
    assert sender.link.write_buffer_size() > link_high
    assert len(receiver.frames) < N
    receiver.link.resume_reading()
    await receiver.wait_frames(N, guard=60.0)
    await sender.until(lambda: sender.resumes == 1)
    _check_in_order(receiver.frames, N, size)
    assert sender.link.write_buffer_size() == 0
    assert not receiver.lost.done() and not sender.lost.done()
    assert link is crec.link


async def test_one_stalled_peer_does_not_stall_another(make_transport, make_rec, make_accepting) -> None:
    """The listener's links share a ROUTER: a full pipe to one peer must
    not stop sending to the others (per-peer EAGAIN, per-link queues)."""
    accepting = make_accepting()
    listener = await make_transport(settings=SMALL_HWM).listen("zmq+tcp://127.0.0.1:0", accepting)
    slow, fast = make_rec(), make_rec()
    await make_transport(settings=SMALL_HWM).connect(listener.address, slow)
    await make_transport(settings=SMALL_HWM).connect(listener.address, fast)
    to_slow, to_fast = await accepting.get(0), await accepting.get(1)
    slow.link.pause_reading()
    blob = b"s" * 64 * 1024
    for i in range(400):  # 25 MiB: far beyond what libzmq and the kernel hold
        to_slow.link.send([SEQ.pack(i), blob])
    await to_slow.until(lambda: to_slow.pauses == 1)
    for i in range(1000):
        to_fast.link.send([SEQ.pack(i)])
    await fast.wait_frames(1000)
    assert [SEQ.unpack(f[0])[0] for f in fast.frames] == list(range(1000))
    assert to_slow.link.write_buffer_size() > 0
    slow.link.resume_reading()
    await slow.wait_frames(400, guard=60.0)
    assert [SEQ.unpack(f[0])[0] for f in slow.frames] == list(range(400))
    assert all(bytes(f[1]) == blob for f in slow.frames)
    await to_slow.until(lambda: to_slow.resumes == 1)


async def test_large_frames_count_until_libzmq_sent_them(make_transport, make_rec, make_accepting) -> None:
    """A large frame goes to libzmq without a copy; until libzmq has sent
    it, it still counts in write_buffer_size (libzmq's HWM counts messages,
    not bytes, so it would hide megabytes)."""
    accepting = make_accepting()
    listener = await make_transport().listen("zmq+tcp://127.0.0.1:0", accepting)
    crec = make_rec()
    link = await make_transport().connect(listener.address, crec)
    srec = await accepting.get(0)
    srec.link.pause_reading()
    big = bytes(8 * 1024 * 1024)
    for _ in range(8):
        link.send([b"h", big])
    await crec.until(lambda: crec.pauses == 1)
    # 64 MiB: more than the kernel takes, so libzmq still holds some of it
    assert link.write_buffer_size() > 8 * 1024 * 1024
    srec.link.resume_reading()
    await srec.wait_frames(8, guard=60.0)
    await crec.until(lambda: crec.resumes == 1)
    assert link.write_buffer_size() == 0
    assert all(type(f[1]) is memoryview and f[1].nbytes == len(big) for f in srec.frames)
    link.close()
    assert await crec.wait_lost() is None
    with pytest.raises(LinkClosed):
        link.send([b"x"])


async def test_libzmq_releasing_a_large_frame_wakes_the_link(
    make_transport, make_rec, make_accepting, monkeypatch
) -> None:
    """The link learns that libzmq has sent a zero-copy frame from pyzmq
    dropping its reference (a notification), not by polling: with the
    safety-net poll pushed out to an hour, writing still resumes."""
    import msgr_zmq._link as zlink

    monkeypatch.setattr(zlink, "_REAP_FALLBACK", 3600.0)
    accepting = make_accepting()
    listener = await make_transport().listen("zmq+tcp://127.0.0.1:0", accepting)
    crec = make_rec()
    link = await make_transport().connect(listener.address, crec)
    srec = await accepting.get(0)
    big = bytes(4 * 1024 * 1024)
    for _ in range(4):
        link.send([b"h", big])
    await crec.until(lambda: crec.pauses == 1)
    await srec.wait_frames(4, guard=30.0)
    await crec.until(lambda: crec.resumes == 1, guard=30.0)
    assert link.write_buffer_size() == 0
    assert all(f[1].nbytes == len(big) for f in srec.frames)
