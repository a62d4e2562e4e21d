"""Authenticated chain links: a mutual challenge-response over a shared cluster key.

Every chain link and join begins with four AUTH messages on a fresh connection::

    initiator -> responder   step 1: identity I, nonce Ni, config c
    responder -> initiator   step 2: identity R, nonce Nr, HMAC(K, "responder" | T)
    initiator -> responder   step 3: HMAC(K, "initiator" | T)
    responder -> initiator   step 4: accepted

where T binds both identities, both nonces and the initiator's configuration
number, and over TLS the session itself (an RFC 5705 exporter value).  Fresh
random nonces on both sides defeat replay; the role label in each MAC and the
refusal of a peer that claims our own identity defeat reflection.  A peer's
identity comes from this exchange, never from a name inside a later message.
docs/security.md gives the threat model.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from kvtwist import wire
from kvtwist.proto.kvtwist_pb2 import ChainAuth
from kvtwist.secretfile import load_secret
from kvtwist.tls import channel_binding
from kvtwist.wire import FramedProtocol, Message

log = Logger(namespace="kvtwist.chain")

NONCE_BYTES = 32
MAC_BYTES = hashlib.sha256().digest_size
MAX_IDENTITY = 512
DEFAULT_AUTH_TIMEOUT = 3.0
_DOMAIN = b"kvtwist chain link v1"


class AuthError(Exception):
    """The handshake failed; the reason is safe to send to the peer."""


def load_key(path: str) -> bytes:
    """Read a cluster key, refusing files that are missing, short or open to others."""
    return load_secret(path, "cluster key")


def _field(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


def _transcript(
    initiator: str,
    responder: str,
    ni: bytes,
    nr: bytes,
    config: int,
    binding: bytes = b"",
    chain: str = "",
) -> bytes:
    """What both MACs cover; over TLS also the session's exporter value (``binding``),
    so that a handshake relayed by someone terminating TLS in the middle fails, and
    on a server hosting many chains the chain the link is for."""
    parts = [
        _field(_DOMAIN),
        _field(initiator.encode()),
        _field(responder.encode()),
        _field(ni),
        _field(nr),
        config.to_bytes(8, "big"),
    ]
    if binding:
        parts.append(_field(binding))
    if chain:
        parts.append(_field(b"chain:" + chain.encode()))
    return b"".join(parts)


def _mac(key: bytes, role: bytes, transcript: bytes) -> bytes:
    return hmac.new(key, _field(role) + transcript, hashlib.sha256).digest()


def _check_identity(identity: str, own: str) -> None:
    if not identity or len(identity.encode()) > MAX_IDENTITY:
        raise AuthError("missing or over-long identity")
    if identity == own:
        raise AuthError("peer claims our own identity")


class Initiator:
    """The dialling side's state: step 1 out, step 2 in, step 3 out, step 4 in."""

    def __init__(
        self, key: bytes, identity: str, config: int, nonce: bytes | None = None, chain: str = ""
    ):
        self.key = key
        self.identity = identity
        self.config = config
        self.chain = chain
        self.nonce = nonce if nonce is not None else os.urandom(NONCE_BYTES)
        self.binding = b""  # the TLS session's exporter value, once the session is up
        self.peer: str | None = None
        self._transcript: bytes | None = None
        self.done = False

    def first(self) -> ChainAuth:
        return ChainAuth(
            step=1, identity=self.identity, nonce=self.nonce, config=self.config, chain=self.chain
        )

    def receive(self, auth: ChainAuth) -> ChainAuth | None:
        """Answer step 2 with step 3; take step 4 (None back). Raises AuthError."""
        if auth.step == 2 and self._transcript is None:
            _check_identity(auth.identity, self.identity)
            if len(auth.nonce) != NONCE_BYTES:
                raise AuthError("bad responder nonce")
            t = _transcript(
                self.identity,
                auth.identity,
                self.nonce,
                auth.nonce,
                self.config,
                self.binding,
                self.chain,
            )
            if not hmac.compare_digest(auth.mac, _mac(self.key, b"responder", t)):
                raise AuthError("responder proof does not match (wrong cluster key?)")
            self._transcript = t
            self.peer = auth.identity
            return ChainAuth(step=3, mac=_mac(self.key, b"initiator", t))
        if auth.step == 4 and self._transcript is not None and not self.done:
            self.done = True
            return None
        raise AuthError(f"unexpected authentication step {auth.step}")


class Responder:
    """The accepting side's state: step 1 in, step 2 out, step 3 in, step 4 out."""

    def __init__(self, key: bytes, identity: str, nonce: bytes | None = None, binding: bytes = b""):
        self.key = key
        self.identity = identity
        self.nonce = nonce if nonce is not None else os.urandom(NONCE_BYTES)
        self.binding = binding  # the TLS session's exporter value (b"" without TLS)
        self.peer: str | None = None  # set once the initiator has proved the key
        self.config = 0
        self.chain = ""  # the chain the initiator's link is for
        self._claimed = ""
        self._transcript: bytes | None = None

    def receive(self, auth: ChainAuth) -> ChainAuth:
        """Answer step 1 with step 2 and step 3 with step 4. Raises AuthError."""
        if auth.step == 1 and self._transcript is None:
            _check_identity(auth.identity, self.identity)
            if len(auth.nonce) != NONCE_BYTES:
                raise AuthError("bad initiator nonce")
            t = _transcript(
                auth.identity,
                self.identity,
                auth.nonce,
                self.nonce,
                auth.config,
                self.binding,
                auth.chain,
            )
            self._transcript = t
            self._claimed = auth.identity
            self.config = auth.config
            self.chain = auth.chain
            mac = _mac(self.key, b"responder", t)
            return ChainAuth(step=2, identity=self.identity, nonce=self.nonce, mac=mac)
        if auth.step == 3 and self._transcript is not None and self.peer is None:
            if not hmac.compare_digest(auth.mac, _mac(self.key, b"initiator", self._transcript)):
                raise AuthError("initiator proof does not match (wrong cluster key?)")
            self.peer = self._claimed
            return ChainAuth(step=4)
        raise AuthError(f"unexpected authentication step {auth.step}")


def auth_message(auth: ChainAuth) -> Message:
    return Message(opcode=wire.OP_CHAIN_AUTH, c_type=wire.CT_CHAIN, auth=auth)


def authenticate(
    conn: FramedProtocol,
    key: bytes,
    identity: str,
    config: int,
    *,
    expect: str | None = None,
    clock: Any = None,
    timeout: float = DEFAULT_AUTH_TIMEOUT,
    chain: str = "",
) -> Deferred[str]:
    """Run the initiator's side on a connected ``conn``; fires with the peer's identity.

    Until it fires, messages others send on ``conn`` are held, and they leave
    only on success.  On a failure, a wrong ``expect``ed identity or no answer
    within ``timeout`` it errbacks with AuthError and closes the connection.
    """
    if clock is None:
        from twisted.internet import reactor as clock
    state = Initiator(key, identity, config, chain=chain)
    d: Deferred[str] = Deferred()

    def finish(error: str | None) -> None:
        if d.called:
            return
        if timer.active():
            timer.cancel()
        conn.endHandshake(error is None)
        if error is None:
            assert state.peer is not None
            d.callback(state.peer)
            return
        log.warn("authentication with {peer} failed: {why}", peer=conn.peerName(), why=error)
        if conn.transport is not None:
            conn.writeMessage(wire.error_reply(f"authentication failed: {error}"))
        conn.disconnect()
        d.errback(Failure(AuthError(error)))

    def received(msg: Message) -> None:
        if d.called:
            return
        if msg.opcode == wire.OP_ERROR:
            finish(f"refused by the peer: {msg.error}")
            return
        if msg.opcode != wire.OP_CHAIN_AUTH:
            finish(f"{wire.op_name(msg.opcode)} during authentication")
            return
        if not state.binding:
            state.binding = channel_binding(conn.transport)  # the TLS session is up by now
        try:
            answer = state.receive(msg.auth)
        except AuthError as e:
            finish(str(e))
            return
        if answer is not None:
            if expect is not None and state.peer != expect:
                finish(f"peer is {state.peer!r}, expected {expect!r}")
                return
            conn.writeMessage(auth_message(answer))
        else:
            finish(None)

    timer = clock.callLater(timeout, lambda: finish(f"no answer within {timeout:g}s"))
    conn.beginHandshake(received)
    conn.writeMessage(auth_message(state.first()))
    return d
