"""The ``[zmq]`` config section: defaults, validation, and socket options."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import Any

import zmq
from zmq.utils import z85

from msgr_core.errors import ConfigError

__all__ = ["DEFAULTS", "SECTION", "ZmqSettings", "context"]

SECTION = "zmq"

#: The ``[zmq]`` section's keys and defaults (a key's type is its default's).
DEFAULTS: dict[str, Any] = {
    "sndhwm": 64,
    "rcvhwm": 64,
    "linger": 1.0,
    "close_timeout": 10.0,
    "heartbeat_ivl": 1.0,
    "heartbeat_timeout": 5.0,
    "tcp_keepalive": True,
    "ipv6": False,
    "copy_threshold": 65536,
    "curve_server": False,
    "curve_secretkey": "",
    "curve_publickey": "",
    "curve_serverkey": "",
    "curve_serverkeys": {},
}

_POSITIVE_INTS = ("sndhwm", "rcvhwm", "copy_threshold")
_SECONDS = ("linger", "close_timeout", "heartbeat_ivl", "heartbeat_timeout")
_BOOLS = ("tcp_keepalive", "ipv6", "curve_server")
_KEYS = ("curve_secretkey", "curve_publickey", "curve_serverkey")


def _key(name: str, value: str) -> bytes:
    """A z85 CURVE key (40 characters) as the bytes libzmq wants."""
    what = "a Z85-encoded CURVE key of 40 characters (zmq.curve_keypair() makes them)"
    if len(value) != 40:
        raise ConfigError(f"{SECTION}.{name}", value, what)
    try:
        raw = z85.decode(value)
    except (ValueError, KeyError, IndexError, TypeError):
        raise ConfigError(f"{SECTION}.{name}", value, what) from None
    if len(raw) != 32:
        raise ConfigError(f"{SECTION}.{name}", value, what)
    return value.encode("ascii")


@dataclass(frozen=True, slots=True)
class ZmqSettings:
    """The checked ``[zmq]`` settings, in the units libzmq takes.

    :ivar curve_client: ``(publickey, secretkey, serverkey)`` for outgoing
        links, or ``None`` (no CURVE on connect).
    :ivar curve_server_secret: the secret key listeners use, or ``None``
        (no CURVE on listen).
    :ivar curve_serverkeys: per listen address (as dialled), the listener's
        public key: links to these addresses use CURVE with it.
    :ivar curve_keypair: ``(publickey, secretkey)`` outgoing CURVE links
        authenticate with (configured, or ephemeral), or ``None``.
    """

    sndhwm: int
    rcvhwm: int
    linger_ms: int
    close_timeout: float
    heartbeat_ivl_ms: int
    heartbeat_timeout_ms: int
    tcp_keepalive: bool
    ipv6: bool
    copy_threshold: int
    curve_server_secret: bytes | None
    curve_client: tuple[bytes, bytes, bytes] | None
    curve_serverkeys: dict[str, bytes] = field(default_factory=dict)
    curve_keypair: tuple[bytes, bytes] | None = None

    def curve_for(self, address: str) -> tuple[bytes, bytes, bytes] | None:
        """``(publickey, secretkey, serverkey)`` for a link to ``address``
        (``curve_serverkeys[address]``, else ``curve_serverkey``), or
        ``None``: no CURVE."""
        key = self.curve_serverkeys.get(address)
        if key is None or self.curve_keypair is None:
            return self.curve_client
        return (*self.curve_keypair, key)

    @classmethod
    def from_mapping(cls, given: dict[str, Any]) -> ZmqSettings:
        """Check ``given`` (a ``[zmq]`` section, partial or whole).

        :raises ConfigError: an unknown key, a value of the wrong type or
            range, an inconsistent CURVE setup, or CURVE asked of a libzmq
            built without it.
        """
        merged = dict(DEFAULTS)
        for key, value in given.items():
            if key not in merged:
                raise ConfigError(f"{SECTION}.{key}", value, f"one of {', '.join(sorted(DEFAULTS))}")
            merged[key] = value
        for key in _POSITIVE_INTS:
            v = merged[key]
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ConfigError(f"{SECTION}.{key}", v, "a positive integer")
        for key in _SECONDS:
            v = merged[key]
            if isinstance(v, bool) or not isinstance(v, int | float) or v < 0:
                raise ConfigError(f"{SECTION}.{key}", v, "a number of seconds >= 0")
        for key in _BOOLS:
            if not isinstance(merged[key], bool):
                raise ConfigError(f"{SECTION}.{key}", merged[key], "true or false")
        for key in _KEYS:
            if not isinstance(merged[key], str):
                raise ConfigError(f"{SECTION}.{key}", merged[key], "a Z85 string")
        if merged["heartbeat_ivl"] and merged["heartbeat_timeout"] < merged["heartbeat_ivl"]:
            raise ConfigError(
                f"{SECTION}.heartbeat_timeout",
                merged["heartbeat_timeout"],
                f"at least zmq.heartbeat_ivl ({merged['heartbeat_ivl']} s)",
            )
        serverkeys = merged["curve_serverkeys"]
        if not isinstance(serverkeys, dict):
            raise ConfigError(f"{SECTION}.curve_serverkeys", serverkeys, "a table of address = Z85 key")
        keys: dict[str, bytes] = {}
        for address, key in serverkeys.items():
            if not isinstance(address, str) or not address.startswith(("zmq+tcp://", "zmq+ipc://")):
                raise ConfigError(f"{SECTION}.curve_serverkeys", address, "zmq+tcp:// or zmq+ipc:// addresses as keys")
            if not isinstance(key, str):
                raise ConfigError(f"{SECTION}.curve_serverkeys.{address}", key, "a Z85 string")
            keys[address] = _key(f"curve_serverkeys.{address}", key)
        server_secret, client, keypair = cls._curve(merged, bool(keys))
        return cls(
            sndhwm=merged["sndhwm"],
            rcvhwm=merged["rcvhwm"],
            linger_ms=round(merged["linger"] * 1000),
            close_timeout=float(merged["close_timeout"]),
            heartbeat_ivl_ms=round(merged["heartbeat_ivl"] * 1000),
            heartbeat_timeout_ms=round(merged["heartbeat_timeout"] * 1000),
            tcp_keepalive=merged["tcp_keepalive"],
            ipv6=merged["ipv6"],
            copy_threshold=merged["copy_threshold"],
            curve_server_secret=server_secret,
            curve_client=client,
            curve_serverkeys=keys,
            curve_keypair=keypair,
        )

    @staticmethod
    def _curve(
        m: dict[str, Any], per_address: bool
    ) -> tuple[bytes | None, tuple[bytes, bytes, bytes] | None, tuple[bytes, bytes] | None]:
        secret = _key("curve_secretkey", m["curve_secretkey"]) if m["curve_secretkey"] else None
        public = _key("curve_publickey", m["curve_publickey"]) if m["curve_publickey"] else None
        serverkey = _key("curve_serverkey", m["curve_serverkey"]) if m["curve_serverkey"] else None
        wanted = m["curve_server"] or serverkey is not None or per_address
        if not wanted:
            if secret is not None or public is not None:
                raise ConfigError(
                    f"{SECTION}.curve_secretkey" if secret else f"{SECTION}.curve_publickey",
                    m["curve_secretkey"] or m["curve_publickey"],
                    "empty unless CURVE is used (set zmq.curve_server = true to serve CURVE, "
                    "or zmq.curve_serverkey to connect with it)",
                )
            return None, None, None
        if not zmq.has("curve"):
            raise ConfigError(
                f"{SECTION}.curve_server" if m["curve_server"] else f"{SECTION}.curve_serverkey",
                m["curve_server"] or m["curve_serverkey"],
                "CURVE off: this libzmq was built without CURVE (libsodium) support",
            )
        own_public = None
        if secret is not None:
            own_public = zmq.curve_public(secret)
            if public is not None and public != own_public:
                raise ConfigError(
                    f"{SECTION}.curve_publickey",
                    m["curve_publickey"],
                    f"the public key of zmq.curve_secretkey ({own_public.decode()})",
                )
        elif public is not None:
            raise ConfigError(f"{SECTION}.curve_secretkey", "", "the secret key of zmq.curve_publickey")
        server_secret = None
        if m["curve_server"]:
            if secret is None:
                raise ConfigError(
                    f"{SECTION}.curve_secretkey",
                    "",
                    "the listeners' secret key (required with zmq.curve_server = true)",
                )
            server_secret = secret
            if serverkey is None:
                # one cluster keypair: every node serves and connects with it
                serverkey = own_public
        # no client keypair configured: an ephemeral one per transport
        keypair = (own_public, secret) if secret is not None and own_public is not None else zmq.curve_keypair()
        client = (*keypair, serverkey) if serverkey is not None else None
        return server_secret, client, keypair

    # -- applying them ------------------------------------------------------

    def apply(self, sock: zmq.Socket[Any], max_part_bytes: int, *, ipv6: bool, handshake_timeout: float) -> None:
        """Set the options every socket of the transport shares."""
        sock.setsockopt(zmq.LINGER, self.linger_ms)
        sock.setsockopt(zmq.HANDSHAKE_IVL, max(1, round(handshake_timeout * 1000)))
        sock.setsockopt(zmq.SNDHWM, self.sndhwm)
        sock.setsockopt(zmq.RCVHWM, self.rcvhwm)
        # refuse an oversize part in libzmq, before it is buffered (frame
        # totals are checked as they arrive)
        sock.setsockopt(zmq.MAXMSGSIZE, max_part_bytes)
        if self.heartbeat_ivl_ms:
            sock.setsockopt(zmq.HEARTBEAT_IVL, self.heartbeat_ivl_ms)
            sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, self.heartbeat_timeout_ms)
            sock.setsockopt(zmq.HEARTBEAT_TTL, self.heartbeat_timeout_ms)
        sock.setsockopt(zmq.TCP_KEEPALIVE, 1 if self.tcp_keepalive else 0)
        if ipv6 or self.ipv6:
            sock.setsockopt(zmq.IPV6, 1)


_ctx_lock = threading.Lock()
_ctx: zmq.Context[Any] | None = None
_ctx_pid = 0


def context() -> zmq.Context[Any]:
    """The process-wide context every msgr-zmq socket is made in (one I/O
    thread); a fresh one after ``fork``."""
    global _ctx, _ctx_pid
    pid = os.getpid()
    ctx = _ctx
    if ctx is not None and _ctx_pid == pid and not ctx.closed:
        return ctx
    with _ctx_lock:
        if _ctx is None or _ctx_pid != pid or _ctx.closed:
            _ctx = zmq.Context()
            _ctx_pid = pid
        return _ctx
