"""HTTPS for the tests: a test CA (``trustme``), certificates on disk, proxies with an
HTTPS listener, and clients that verify what they are served (fixtures: ``ca``,
``pairs``)."""

from __future__ import annotations

import ssl
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from helpers import RawConn, build_request, free_port

WAIT = 30.0


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@dataclass
class Pair:
    """A certificate and key on disk, as a ``[[certificates]]`` entry."""

    cert: Path
    key: Path
    serial: int

    def entry(self, **extra) -> dict:
        return {"cert": str(self.cert), "key": str(self.key), **extra}


def issue(ca: trustme.CA, directory: Path, name: str, *hosts: str, rsa_key=False) -> Pair:
    key_type = trustme.KeyType.RSA if rsa_key else trustme.KeyType.ECDSA
    issued = ca.issue_cert(*hosts, key_type=key_type)
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    cert.write_bytes(b"".join(pem.bytes() for pem in issued.cert_chain_pems))
    key.write_bytes(issued.private_key_pem.bytes())
    serial = x509.load_pem_x509_certificate(issued.cert_chain_pems[0].bytes()).serial_number
    return Pair(cert, key, serial)


@pytest.fixture
def pairs(ca, tmp_path) -> dict[str, Pair]:
    return {
        "app": issue(ca, tmp_path, "app", "app.test", "www.app.test"),
        "wild": issue(ca, tmp_path, "wild", "*.wild.test"),
        "other": issue(ca, tmp_path, "other", "other.test", rsa_key=True),
    }


def tls_top(pairs: dict[str, Pair], **extra) -> dict:
    """A plain listener first (the test fixtures wait for it), then an HTTPS one."""
    return {
        "listen": [f"127.0.0.1:{free_port()}", "https://127.0.0.1:0"],
        "certificates": [pair.entry() for pair in pairs.values()],
        **extra,
    }


def https_port(proxy) -> int:
    line = proxy.output.wait_for(lambda s: s.startswith("fastpause: listening on https://"))
    assert line is not None, proxy.describe()
    return int(line.rsplit(":", 1)[1])


def client_context(ca: trustme.CA, **settings) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    for name, value in settings.items():
        setattr(context, name, value)
    return context


def tls_conn(port: int, context: ssl.SSLContext, name: str | None) -> RawConn:
    conn = RawConn(port, timeout=WAIT)
    conn.sock = context.wrap_socket(conn.sock, server_hostname=name)
    return conn


def served_serial(conn: RawConn) -> int:
    der = conn.sock.getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der).serial_number


def get(conn: RawConn, target: str, host: str = "app.test"):
    conn.send(build_request("GET", target, host=host))
    return conn.read_response()


class TlsBackend:
    """``tests/backend.py --tls``: the test backend over HTTPS, with a certificate of
    the test CA for ``backend.test``."""

    def __init__(self, ca: trustme.CA, tmp_path: Path) -> None:
        from conftest import Process  # the fixtures' process wrapper (conftest is loaded)

        pair = issue(ca, tmp_path, "backend", "backend.test")
        backend = Path(__file__).resolve().parent / "backend.py"
        self.process = Process(
            [sys.executable, str(backend), "--tls", str(pair.cert), str(pair.key)],
            tmp_path / "tls-backend.stderr",
            tmp_path,
        )
        line = self.process.output.wait_for(lambda s: s.startswith("backend: listening on "))
        assert line is not None, self.process.describe()
        self.port = int(line.rsplit(":", 1)[1])
        self.ca_file = tmp_path / "ca.pem"
        ca.cert_pem.write_to_path(str(self.ca_file))


@pytest.fixture
def tls_backend(ca, tmp_path):
    backend = TlsBackend(ca, tmp_path)
    yield backend
    backend.process.stop()
