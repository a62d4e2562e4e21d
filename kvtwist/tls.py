"""TLS on the node's port: its certificate, and how clients and peers check it.

With ``--tls-cert``/``--tls-key`` the port speaks TLS only.  Chain links and
requests a node forwards to the head or the tail go to the same port, so they
use TLS too.  A client verifies the node against a CA (or the system's trust
store) and the name or address it dialled.  A link encrypts without checking
the certificate: the cluster-key handshake authenticates it, and binds itself
to the TLS session (:func:`channel_binding`), see docs/security.md.
"""

from __future__ import annotations

import re
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL, crypto
from service_identity import VerificationError
from twisted.internet import ssl

__all__ = [
    "ClientTLS",
    "TLSConfigError",
    "channel_binding",
    "links",
    "server_options",
    "tls_reason",
]

_PEM_CERT = re.compile(
    rb"-----BEGIN CERTIFICATE-----\r?\n.+?\r?\n-----END CERTIFICATE-----", re.DOTALL
)
#: RFC 5705 exporter label: what a chain-link handshake binds itself to.
EXPORTER_LABEL = b"EXPORTER-kvtwist-chain-link"
EXPORTER_BYTES = 32


#: What a failed TLS handshake or certificate check raises.
TLS_ERRORS = (SSL.Error, VerificationError)


class TLSConfigError(ValueError):
    """A certificate, key or CA file is unusable; one line for the operator."""


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(1 << 20)
    except OSError as e:
        raise TLSConfigError(f"{what} {path}: {e.strerror}") from None


def _pem_certificates(path: str, what: str) -> list[bytes]:
    blocks = _PEM_CERT.findall(_read(path, what))
    if not blocks:
        raise TLSConfigError(f"{what} {path} holds no PEM certificate")
    return blocks


def load_certificates(path: str, what: str) -> list[ssl.Certificate]:
    """Every PEM certificate in ``path``, in order; TLSConfigError when there is none."""
    try:
        return [ssl.Certificate.loadPEM(block) for block in _pem_certificates(path, what)]
    except crypto.Error as e:
        raise TLSConfigError(f"{what} {path}: unreadable certificate ({tls_reason(e)})") from None


def server_options(cert_file: str, key_file: str) -> ssl.CertificateOptions:
    """The node's side: its certificate (then any intermediates) and its private key.

    Checked now, so a key that does not match the certificate stops the node
    with one line instead of failing every handshake later.
    """
    blocks = _pem_certificates(cert_file, "--tls-cert")
    try:
        certs = [x509.load_pem_x509_certificate(block) for block in blocks]
    except ValueError as e:
        raise TLSConfigError(f"--tls-cert {cert_file}: unreadable certificate ({e})") from None
    try:
        key = serialization.load_pem_private_key(_read(key_file, "--tls-key"), password=None)
    except (ValueError, TypeError) as e:
        raise TLSConfigError(f"--tls-key {key_file}: unreadable PEM key ({e})") from None
    # pyOpenSSL takes cryptography's objects (its own X509 and PKey are deprecated);
    # Twisted's annotations still name the old ones
    options = ssl.CertificateOptions(
        privateKey=key,  # type: ignore[arg-type]
        certificate=certs[0],  # type: ignore[arg-type]
        extraCertChain=certs[1:],  # type: ignore[arg-type]
    )
    try:
        options.getContext()
    except SSL.Error as e:
        raise TLSConfigError(
            f"--tls-key {key_file} does not go with --tls-cert {cert_file} ({tls_reason(e)})"
        ) from None
    return options


class ClientTLS:
    """How the connecting side checks the node it reaches over TLS.

    ``ca_file``: trust the CA certificates in that PEM file (None: the
    system's trust store); the node's certificate must also name the host or
    address dialled.  ``verify=False`` encrypts without checking anything:
    only for chain links, which the cluster key authenticates.
    """

    def __init__(self, ca_file: str | None = None, *, verify: bool = True) -> None:
        self.ca_file = ca_file
        self.verify = verify
        self._trust: Any = None
        if ca_file is not None:
            certs = load_certificates(ca_file, "CA file")
            self._trust = ssl.trustRootFromCertificates(certs)
        self._unverified = ssl.CertificateOptions() if not verify else None

    def creator(self, host: str) -> Any:
        """The connection creator for ``host`` (a name or an IP literal)."""
        if self._unverified is not None:
            return self._unverified
        return ssl.optionsForClientTLS(host, trustRoot=self._trust)

    def __repr__(self) -> str:
        what = "unverified" if not self.verify else self.ca_file or "system trust"
        return f"<ClientTLS {what}>"


def links(peer_ca: str | None = None) -> ClientTLS:
    """What a node uses to dial its peers when its port speaks TLS.

    Without ``peer_ca`` nothing is checked (the cluster key authenticates
    links; forwarded requests are then open to a man in the middle); with it,
    a peer's certificate must be signed by those CAs and name its address.
    """
    if peer_ca is None:
        return ClientTLS(verify=False)
    return ClientTLS(peer_ca)


def channel_binding(transport: Any) -> bytes:
    """A value both ends of one TLS session share and no one else knows; b"" without TLS.

    A handshake that covers it cannot be relayed by someone who terminates
    TLS in the middle: the two sessions export different values.
    """
    get_handle = getattr(transport, "getHandle", None)
    handle = get_handle() if get_handle is not None else None
    if not isinstance(handle, SSL.Connection):
        return b""
    return bytes(handle.export_keying_material(EXPORTER_LABEL, EXPORTER_BYTES))


def tls_reason(e: BaseException | None) -> str:
    """The first OpenSSL reason in an error (``certificate verify failed``), or its text."""
    if e is None:
        return "unknown error"
    if isinstance(e, VerificationError):
        return "the certificate does not name the host dialled"
    args = e.args[0] if e.args else None
    if isinstance(args, list) and args and isinstance(args[0], tuple) and len(args[0]) >= 3:
        reason = str(args[0][2])
        if reason in _NOT_TLS:
            reason += " (the node does not seem to speak TLS)"
        return reason
    return str(e) or type(e).__name__


#: What OpenSSL says when the other end answers in plain frames.
_NOT_TLS = frozenset({"wrong version number", "packet length too long", "record layer failure"})
