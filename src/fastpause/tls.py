"""TLS termination for ``https://`` listeners: certificates, and SNI picking one.

A certificate is checked when the config is read (``read_certificate``): both
files readable, PEM, the key matching the certificate; the names it serves are
its own (subject alternative names) unless the config lists ``hosts``. So a
mistake is a config error naming the file, at start and at reload alike.

``ServerTls`` owns one ``ssl.SSLContext`` that every HTTPS server is created with
and that is never replaced: its SNI callback picks, per connection, the context
of the certificate for the name the client asked for. A reload builds new
per-certificate contexts and swaps them in (``update``): new handshakes get the
new certificates, open connections keep theirs, and no listener restarts.
Session tickets are issued under the front context's keys, so a reload does not
invalidate them either.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from fastpause.wire import plain

ALPN = ["http/1.1"]
TLS_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


class CertificateError(ValueError):
    """A certificate or key that cannot be used; ``field`` is ``cert`` or ``key``."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(problem)
        self.field = field


@plain
@dataclass(frozen=True)
class Certificate:
    """A ``[[certificates]]`` entry, checked: the files, the names it serves (lowercase,
    ``*.example.com`` for a wildcard), whether it is the default, and its key type
    (an RSA and an ECDSA certificate for the same names share a context)."""

    cert: str
    key: str
    hosts: tuple[str, ...]
    default: bool = False
    key_type: str = ""


def read_certificate(
    cert: str, key: str, hosts: Sequence[str] = (), default: bool = False
) -> Certificate:
    """Check a certificate and its key; ``CertificateError`` says which file is wrong."""
    certificates = _load_certificates(cert)
    private_key = _load_key(key)
    public = (
        certificates[0]
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    mine = private_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if public != mine:
        raise CertificateError("key", f"{key} is not the private key of the certificate in {cert}")
    names = tuple(hosts) or _names(certificates[0])
    if not names:
        raise CertificateError(
            "cert", f"the certificate in {cert} names no host: list the names in 'hosts'"
        )
    return Certificate(cert, key, names, default, _key_type(private_key))


def _read(path: str, field: str) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as error:
        raise CertificateError(field, f"cannot read {path}: {error.strerror}") from None


def _load_certificates(path: str) -> list[x509.Certificate]:
    data = _read(path, "cert")
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        certificates = []
    if not certificates:
        raise CertificateError("cert", f"{path} holds no PEM certificate")
    return certificates


def _load_key(path: str) -> object:
    data = _read(path, "key")
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise CertificateError("key", f"{path} is encrypted: give the key unencrypted") from None
    except ValueError:
        raise CertificateError("key", f"{path} holds no PEM private key") from None


def _names(certificate: x509.Certificate) -> tuple[str, ...]:
    """The DNS names a certificate is for: its subject alternative names, or else its
    common name (as clients did before SANs)."""
    try:
        extension = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        names = extension.value.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        names = [
            str(attribute.value)
            for attribute in certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        ]
    unique: dict[str, None] = {}
    for name in names:
        unique.setdefault(name.lower().removesuffix("."), None)
    return tuple(unique)


def _key_type(key: object) -> str:
    if isinstance(key, rsa.RSAPrivateKey):
        return "RSA"
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return "ECDSA"
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "Ed25519"
    return type(key).__name__


class TlsSettings(Protocol):
    """What ``ServerTls`` reads from the config."""

    certificates: tuple[Certificate, ...]
    tls_min_version: str
    tls_handshake_timeout: float


class Certificates:
    """Certificates loaded into contexts, and which one serves a name."""

    def __init__(self, settings: TlsSettings) -> None:
        """Load every certificate of ``settings``; ``CertificateError`` if one fails."""
        by_hosts: dict[tuple[str, ...], ssl.SSLContext] = {}
        self._exact: dict[str, ssl.SSLContext] = {}
        self._wildcard: dict[str, ssl.SSLContext] = {}  # by the suffix after "*."
        self._default: ssl.SSLContext | None = None
        for certificate in settings.certificates:
            context = by_hosts.get(certificate.hosts)
            if context is None:
                context = by_hosts[certificate.hosts] = _context(settings.tls_min_version)
            try:  # an RSA and an ECDSA certificate live side by side in one context
                context.load_cert_chain(certificate.cert, certificate.key)
            except (OSError, ssl.SSLError) as error:  # changed since the config was read
                raise CertificateError("cert", f"cannot load {certificate.cert}: {error}") from None
            for host in certificate.hosts:
                if host.startswith("*."):
                    self._wildcard.setdefault(host[2:], context)
                else:
                    self._exact.setdefault(host, context)
            if self._default is None or certificate.default:
                self._default = context

    def select(self, server_name: str | None) -> ssl.SSLContext | None:
        """The context for ``server_name``: its own certificate, a wildcard's (one
        label), or the default one (no SNI, or a name no certificate serves)."""
        if server_name:
            name = server_name.lower().removesuffix(".")
            found = self._exact.get(name)
            if found is None:
                found = self._wildcard.get(name.partition(".")[2])
            if found is not None:
                return found
        return self._default


class ServerTls:
    """The TLS side of every ``https://`` listener of one process."""

    def __init__(self, settings: TlsSettings) -> None:
        self.context = _context(settings.tls_min_version)  # every HTTPS server's
        self.context.sni_callback = self._on_server_name
        self.certificates = Certificates(settings)
        self.handshake_timeout = settings.tls_handshake_timeout

    def install(self, certificates: Certificates, settings: TlsSettings) -> None:
        """A reload's certificates and settings, for the handshakes from now on (built
        by the caller first, so that a failure changes nothing)."""
        self.context.minimum_version = TLS_VERSIONS[settings.tls_min_version]
        self.certificates = certificates
        self.handshake_timeout = settings.tls_handshake_timeout

    def _on_server_name(
        self, connection: ssl.SSLObject, server_name: str | None, _front: ssl.SSLContext
    ) -> int | None:
        context = self.certificates.select(server_name)
        if context is None:  # no certificate at all: the config refuses that
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        connection.context = context
        return None


def _context(min_version: str) -> ssl.SSLContext:
    """A server context with modern defaults: TLS 1.2 or 1.3 at least, Python's
    forward-secret AEAD cipher list for TLS 1.2, ALPN ``http/1.1``, no
    renegotiation, the server's cipher order."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = TLS_VERSIONS[min_version]
    context.options |= ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
    context.set_alpn_protocols(ALPN)
    return context


def client_context(ca: str | None, verify: bool) -> ssl.SSLContext:
    """How fastpause dials ``https://`` upstreams: the certificate checked against
    ``ca`` (a PEM bundle) or else the system's store, for the upstream's name;
    ``verify`` False checks nothing (the config makes that loud)."""
    context = ssl.create_default_context(cafile=ca)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(ALPN)
    return context


def check_ca(path: str) -> None:
    """``CertificateError`` unless ``path`` is a bundle of PEM certificates."""
    try:
        ssl.create_default_context(cafile=path)
    except (OSError, ssl.SSLError):
        raise CertificateError("ca", f"{path} holds no PEM certificate") from None
