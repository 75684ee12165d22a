"""The transport object: addresses, settings, unix socket files, plugin registration."""

from __future__ import annotations

import errno
import os
import socket
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import msgr_tcp
import pytest
from msgr_tcp import TcpTransport

from msgr_core.errors import ConfigError, UnsupportedAddress
from msgr_core.transport import TransportOptions


async def test_entry_points_name_the_module_with_the_hookimpl() -> None:
    eps = {ep.name: ep.value for ep in entry_points(group="msgr.transports")}
    assert eps["tcp"] == "msgr_tcp"
    assert eps["unix"] == "msgr_tcp"
    assert eps["tls"] == "msgr_tcp"
    assert msgr_tcp.msgr_register_transports() == [TcpTransport, msgr_tcp.TlsTransport]
    assert TcpTransport.schemes == ("tcp", "unix")
    assert TcpTransport.distribution == "msgr-tcp"
    assert TcpTransport.config_section == "tcp"


async def test_the_registry_finds_the_transport_for_both_schemes() -> None:
    registry = pytest.importorskip("msgr_core.registry")
    assert registry.load_transport_class("tcp") is TcpTransport
    assert registry.load_transport_class("unix") is TcpTransport
    assert registry.load_transport_class("tls") is msgr_tcp.TlsTransport


async def test_settings_are_checked() -> None:
    t = TcpTransport("tcp", TransportOptions(settings={"backlog": 10, "close_timeout": 1}))
    assert t.settings["backlog"] == 10
    assert t.settings["close_timeout"] == 1.0
    assert t.settings["nodelay"] is True
    with pytest.raises(ConfigError) as info:
        TcpTransport("tcp", TransportOptions(settings={"nodelya": False}))
    assert info.value.key == "tcp.nodelya"
    with pytest.raises(ConfigError, match="true or false"):
        TcpTransport("tcp", TransportOptions(settings={"nodelay": 1}))
    with pytest.raises(ConfigError, match="positive integer"):
        TcpTransport("tcp", TransportOptions(settings={"backlog": 0}))
    with pytest.raises(ConfigError, match="positive number"):
        TcpTransport("tcp", TransportOptions(settings={"close_timeout": "soon"}))
    with pytest.raises(ConfigError, match="low_watermark"):
        TcpTransport("tcp", TransportOptions(high_watermark=10, low_watermark=20))
    with pytest.raises(ValueError, match="not 'zmq'"):
        TcpTransport("zmq", TransportOptions())


@pytest.mark.parametrize(
    "address",
    [
        "not an address",
        "zmq+tcp://127.0.0.1:1",
        "tcp://127.0.0.1",  # no port
        "tcp://127.0.0.1:80/path",
        "tcp://127.0.0.1:99999",
        "unix://relative/path.sock",
        "unix://",
        "unix:///",
    ],
)
async def test_bad_addresses_are_refused(address: str) -> None:
    t = TcpTransport("tcp", TransportOptions())
    with pytest.raises(UnsupportedAddress):
        await t.listen(address, lambda: None)  # type: ignore[arg-type,return-value]
    with pytest.raises(UnsupportedAddress):
        await t.connect(address, None)  # type: ignore[arg-type]


@pytest.mark.parametrize("address", ["tcp://127.0.0.1:0", "tcp://:80"])
async def test_connect_needs_a_host_and_a_port(address: str) -> None:
    with pytest.raises(UnsupportedAddress):
        await TcpTransport("tcp", TransportOptions()).connect(address, None)  # type: ignore[arg-type]


async def test_socket_options_follow_the_settings(net: Any) -> None:
    for nodelay, keepalive in ((True, True), (False, False)):
        link, _client, server, _ = await net.pair(
            "tcp://127.0.0.1:0", settings={"nodelay": nodelay, "keepalive": keepalive}
        )
        for lk in (link, server.link):
            sock = lk._transport.get_extra_info("socket")
            assert bool(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)) is nodelay
            assert bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)) is keepalive


async def test_wildcard_listen(net: Any) -> None:
    t = net.transport()
    listener, accepted = await net.listen(t, "tcp://:0")
    port = int(listener.address.rsplit(":", 1)[1])
    rec = net.recorder("client")
    await t.connect(f"tcp://127.0.0.1:{port}", rec)
    await net.until(lambda: accepted and accepted[0].link is not None)


async def test_listening_twice_on_one_port_fails(net: Any) -> None:
    t = net.transport()
    listener, _ = await net.listen(t, "tcp://127.0.0.1:0")
    with pytest.raises(OSError) as info:
        await t.listen(listener.address, lambda: None)  # type: ignore[arg-type,return-value]
    assert info.value.errno == errno.EADDRINUSE


async def test_unix_listen_removes_a_stale_socket_and_aclose_removes_its_own(net: Any, sock_dir: Path) -> None:
    path = sock_dir / "stale.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))  # left behind by a listener that died
    t = net.transport("unix")
    listener, accepted = await net.listen(t, f"unix://{path}")
    assert listener.address == f"unix://{path}"
    rec = net.recorder("client")
    link = await t.connect(listener.address, rec)
    await net.until(lambda: accepted and accepted[0].link is not None)
    await listener.aclose()
    await listener.aclose()
    assert not path.exists()
    # links outlive their listener
    link.send([b"still up"])
    await accepted[0].wait_frames(1)
    with pytest.raises(FileNotFoundError):
        await t.connect(listener.address, net.recorder())


async def test_unix_listen_refuses_a_live_socket_and_other_files(net: Any, sock_dir: Path) -> None:
    t = net.transport("unix")
    path = sock_dir / "live.sock"
    _listener, _ = await net.listen(t, f"unix://{path}")
    with pytest.raises(OSError) as info:
        await t.listen(f"unix://{path}", lambda: None)  # type: ignore[arg-type,return-value]
    assert info.value.errno == errno.EADDRINUSE
    assert path.exists()
    plain = sock_dir / "plain-file"
    plain.write_text("not a socket")
    with pytest.raises(FileExistsError):
        await t.listen(f"unix://{plain}", lambda: None)  # type: ignore[arg-type,return-value]
    assert plain.read_text() == "not a socket"


async def test_unix_aclose_leaves_a_file_someone_else_bound(net: Any, sock_dir: Path) -> None:
    t = net.transport("unix")
    path = sock_dir / "taken.sock"
    listener, _ = await net.listen(t, f"unix://{path}")
    os.unlink(path)
    with socket.socket(socket.AF_UNIX) as other:
        other.bind(str(path))
        await listener.aclose()
        assert path.exists()


async def test_unix_paths_are_percent_decoded(net: Any, sock_dir: Path) -> None:
    t = net.transport("unix")
    listener, accepted = await net.listen(t, f"unix://{sock_dir}/with%20space.sock")
    assert (sock_dir / "with space.sock").exists()
    assert listener.address == f"unix://{sock_dir}/with%20space.sock"
    await t.connect(listener.address, net.recorder("client"))
    await net.until(lambda: accepted and accepted[0].link is not None)
