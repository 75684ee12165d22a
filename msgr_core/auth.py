"""Shared-secret authentication in the session handshake.

Transport-independent: it rides on the handshake frames, so it works the
same over ``loop://``, ``tcp://``, ``tls://``, ``zmq+tcp://`` and the rest.

The exchange adds one round trip to the handshake, never anything per
message::

    dialler                                   acceptor
    HELLO {.., auth: Nc}          ------>     key = keyring[dialler's name, else type, else cluster]
                                  <------     AUTH {nonce: Ns, name: S, proof: HMAC(key, "server" ..)}
    check the acceptor's proof
    AUTH {proof: HMAC(key, "client" ..)}  ->  check the dialler's proof
                                  <------     HELLO_OK (or REFUSE "authentication failed")

Both proofs are HMAC-SHA256 under the *dialler's* key over a direction
label, both nonces (32 random bytes each, fresh per handshake), both entity
names and the dialler's type (:func:`proof`).  So:

- each side proves it holds the key (mutual: the dialler checks the
  acceptor's proof before it sends its own);
- a proof is only valid for the handshake whose nonces it covers (replay
  fails), and for its direction (reflecting the acceptor's proof back at it
  fails);
- nothing but handshake frames is processed on a link before it
  authenticates; a failure is answered only ``"authentication failed"``.

Keys come from a keyring file (:func:`load_keyring`; refused when group- or
world-accessible) and/or inline in the ``[auth]`` config section
(:meth:`Authenticator.from_config`).  :func:`generate_key` makes one.

What it does *not* do: protect the traffic after the handshake.  An
on-path attacker can read, inject or hijack a plain ``tcp://`` link once it
is up; use ``tls://`` (or CURVE on ``zmq+tcp://``) for that.  See
``docs/security.md``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError

__all__ = [
    "NONCE_BYTES",
    "Authenticator",
    "HandshakeAuth",
    "Keyring",
    "decode_key",
    "generate_key",
    "load_keyring",
    "proof",
]

#: Bytes of each handshake nonce.
NONCE_BYTES = 32
#: Shortest key accepted (decoded), in bytes.
MIN_KEY_BYTES = 16
_DOMAIN = b"msgr-auth-v1"


def generate_key(nbytes: int = 32) -> str:
    """A new random key, base64-encoded, for a keyring or ``[auth]`` config.

    ``python -c "import msgr_core.auth as a; print(a.generate_key())"``
    """
    if nbytes < MIN_KEY_BYTES:
        raise ValueError(f"a key has at least {MIN_KEY_BYTES} bytes")
    return base64.b64encode(secrets.token_bytes(nbytes)).decode("ascii")


def decode_key(text: Any, *, key: str, source: str = "<dict>") -> bytes:
    """Decode one base64 key.

    :param key: the dotted key it came from (for the error).
    :raises ConfigError: not a string, not base64, or shorter than
        :data:`MIN_KEY_BYTES` bytes.  The message never contains the key.
    """
    if not isinstance(text, str):
        raise ConfigError(key, "<not shown>", "a base64 string", source=source)
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(key, "<not shown>", "a base64 string", source=source) from None
    if len(raw) < MIN_KEY_BYTES:
        raise ConfigError(key, "<not shown>", f"a key of at least {MIN_KEY_BYTES} bytes (got {len(raw)})",
                          source=source)
    return raw


@dataclass
class Keyring:
    """Keys by entity name, by entity type, and one for everyone else.

    :ivar keys: entity name -> key (``"osd.1"``).
    :ivar types: entity type -> key (``"osd"``).
    :ivar cluster: the key of any entity matched by neither, or ``None``.
    """

    keys: dict[str, bytes] = field(default_factory=dict)
    types: dict[str, bytes] = field(default_factory=dict)
    cluster: bytes | None = None

    def key_for(self, name: str, type_: str) -> bytes | None:
        """The key of entity ``name`` of type ``type_``: by name, else by
        type, else the cluster key; ``None`` if there is none."""
        key = self.keys.get(name)
        if key is None:
            key = self.types.get(type_)
        if key is None:
            key = self.cluster
        return key

    def __bool__(self) -> bool:
        return bool(self.keys or self.types or self.cluster is not None)

    def update(self, data: Mapping[str, Any], *, source: str, prefix: str = "") -> None:
        """Add the keys of a keyring document (``cluster``, ``[keys]``,
        ``[types]``), replacing existing ones.

        :raises ConfigError: a table or key is malformed.
        """
        cluster = data.get("cluster", "")
        if cluster:
            self.cluster = decode_key(cluster, key=f"{prefix}cluster", source=source)
        for table, target in (("keys", self.keys), ("types", self.types)):
            entries = data.get(table, {})
            if not isinstance(entries, Mapping):
                raise ConfigError(f"{prefix}{table}", entries, "a table of name = base64 key", source=source)
            for name, text in entries.items():
                target[str(name)] = decode_key(text, key=f"{prefix}{table}.{name}", source=source)

    def __repr__(self) -> str:  # never print key material
        return f"<Keyring {len(self.keys)} names, {len(self.types)} types, cluster={self.cluster is not None}>"


def load_keyring(path: str | os.PathLike[str]) -> Keyring:
    """Read a keyring file (TOML)::

        cluster = "base64..."          # optional: any entity not listed below
        [keys]
        "osd.1" = "base64..."
        [types]
        client = "base64..."

    :raises ConfigError: the file is missing or unreadable, is readable or
        writable by group or others (``chmod 600`` it), is not TOML, has
        unknown tables, or a key is not base64 of at least 16 bytes.
    """
    p = Path(path)
    where = "auth.keyring"
    try:
        st = p.stat()
    except OSError as exc:
        raise ConfigError(where, str(p), "a readable keyring file", hint=exc.strerror or str(exc)) from None
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(where, str(p), "a regular file")
    if st.st_mode & 0o077:
        raise ConfigError(where, str(p), "a file only its owner can access",
                          hint=f"mode is {stat.filemode(st.st_mode)}; run chmod 600 {p}")
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(where, str(p), "a readable keyring file", hint=exc.strerror or str(exc)) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        # the parser's message may quote the file: keep key material out of it
        raise ConfigError(where, str(p), "a TOML keyring", hint=type(exc).__name__) from None
    unknown = sorted(set(data) - {"cluster", "keys", "types"})
    if unknown:
        raise ConfigError(where, str(p), "only cluster, [keys] and [types] in a keyring",
                          hint=f"unknown: {', '.join(unknown)}")
    ring = Keyring()
    ring.update(data, source=str(p))
    return ring


def proof(key: bytes, direction: bytes, client_nonce: bytes, server_nonce: bytes,
          client_name: str, client_type: str, server_name: str) -> bytes:
    """HMAC-SHA256 proof of ``key`` for one handshake and one direction
    (``b"client"`` or ``b"server"``).  Every field is length-prefixed, so
    no two different handshakes share an input."""
    parts = (_DOMAIN, direction, client_nonce, server_nonce,
             client_name.encode(), client_type.encode(), server_name.encode())
    msg = b"".join(len(p).to_bytes(4, "big") + p for p in parts)
    return hmac.new(key, msg, hashlib.sha256).digest()


def check(expected: bytes, given: Any) -> bool:
    """Constant-time comparison of a received proof (any type) with the expected one."""
    return isinstance(given, bytes) and hmac.compare_digest(expected, given)


class HandshakeAuth:
    """Authentication state of one link's handshake (kept on the link's port).

    Dialler: ``key`` and ``nonce`` are ours; ``peer_name`` is set and
    ``done`` becomes true once the acceptor proved itself.  Acceptor:
    ``hello`` is the dialler's HELLO waiting for its proof; ``done`` once it
    came and verified.
    """

    __slots__ = ("done", "expected", "hello", "key", "nonce", "peer_name", "peer_type")

    def __init__(self, key: bytes, nonce: bytes) -> None:
        self.key = key
        self.nonce = nonce
        self.done = False
        self.expected = b""  # the proof the other side must send
        self.hello: dict[str, Any] | None = None
        self.peer_name = ""
        self.peer_type = ""


class Authenticator:
    """A messenger's ``[auth]`` settings, resolved.

    :ivar keyring: every key known (file, then inline config).
    :ivar require: refuse peers that do not authenticate, and refuse to
        use an acceptor that does not prove itself.
    """

    def __init__(self, keyring: Keyring, require: bool) -> None:
        self.keyring = keyring
        self.require = require

    @classmethod
    def from_config(cls, section: Mapping[str, Any], *, source: str = "<dict>") -> Authenticator:
        """Build from the checked ``[auth]`` section.

        ``require`` unset (``None``) means: require when any key is configured.

        :raises ConfigError: keyring problems (see :func:`load_keyring`), a
            bad inline key, or ``require = true`` with no key at all.
        """
        ring = load_keyring(section["keyring"]) if section.get("keyring") else Keyring()
        ring.update({"keys": section.get("keys", {}), "types": section.get("types", {})},
                    source=source, prefix="auth.")
        if section.get("cluster_key"):
            ring.cluster = decode_key(section["cluster_key"], key="auth.cluster_key", source=source)
        require = section.get("require")
        if require is None:
            require = bool(ring)
        elif not isinstance(require, bool):
            raise ConfigError("auth.require", require, "true or false (or leave it out)", source=source)
        if require and not ring:
            raise ConfigError("auth.require", True, "a keyring or inline keys to authenticate with",
                              source=source, hint="set auth.keyring, auth.cluster_key, auth.keys or auth.types")
        return cls(ring, bool(require))

    @property
    def enabled(self) -> bool:
        """Whether any key is configured."""
        return bool(self.keyring)

    def key_for(self, name: str, type_: str) -> bytes | None:
        return self.keyring.key_for(name, type_)

    @staticmethod
    def new_nonce() -> bytes:
        return secrets.token_bytes(NONCE_BYTES)
