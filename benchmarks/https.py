"""HTTPS throughput: every proxy terminating TLS 1.3 with the same ECDSA P-256
certificate, in front of one plain-HTTP NGINX backend.

``python -m benchmarks.https`` runs the small-body scenarios the way the
throughput group does - keep-alive (64 connections: the TLS record layer) and a
new connection per request (a full handshake each: wrk does not resume sessions)
- with interleaved rounds, CPU of every process of each proxy, one worker or
thread each; prints each round's CPU-per-request and requests/s ratio against
NGINX and writes ``benchmarks/results/https.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import sys
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from benchmarks import machine, peers, throughput
from benchmarks.processes import HarnessError, Supervisor

RESULTS = Path(__file__).resolve().parent / "results" / "https.json"
SCENARIOS = ("small-ka", "small-close")


def make_certificate(directory: Path) -> peers.TlsFiles:
    """A self-signed ECDSA P-256 certificate for localhost and 127.0.0.1 (wrk does
    not verify; every peer serves the same one)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    files = peers.TlsFiles(directory / "cert.pem", directory / "key.pem", directory / "both.pem")
    files.cert.write_bytes(cert_pem)
    files.key.write_bytes(key_pem)
    files.combined.write_bytes(cert_pem + key_pem)
    for path in (files.cert, files.key, files.combined):
        path.chmod(0o644)  # NGINX reads them as root, but its workers run as nobody
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.https", description=__doc__)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--peers", default="fastpause,nginx,haproxy,caddy")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    args = parser.parse_args(argv)
    names = [name for name in args.peers.split(",") if name]
    scenarios = [name for name in args.scenarios.split(",") if name]
    workdir = Path(tempfile.mkdtemp(prefix="fastpause-bench-https-"))
    workdir.chmod(0o755)
    rows: list[dict] = []
    try:
        with Supervisor(workdir) as sup:
            peers.ensure_tools(names)
            files = make_certificate(workdir)
            registry = {
                name: type(f"{cls.__name__}Tls", (cls,), {"tls": files})
                for name, cls in peers.PEERS.items()
            }
            load_before = machine.load_now()
            rows = throughput.run_scenarios(
                sup,
                workdir,
                scenarios,
                duration=args.duration,
                rounds=args.rounds,
                peers=names,
                registry=registry,
                label="over HTTPS (TLS 1.3, ECDSA P-256)",
            )
    except HarnessError as error:
        print(f"benchmarks: {error}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    throughput.print_round_ratios(rows, names, scenarios)
    RESULTS.parent.mkdir(exist_ok=True)
    summary = throughput.summarize(rows)
    results = {"load_before": load_before, "rows": rows, "summary": summary}
    RESULTS.write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
