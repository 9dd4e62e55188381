"""Real HTTP(S) parts for webhook tests: a TLS CA, an HTTPS artifact server, a running receiver."""

from __future__ import annotations

import datetime
import functools
import http.client
import http.server
import ipaddress
import json
import shutil
import ssl
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from deployer.webhook.deployments import ReceiverSettings
from deployer.webhook.receiver import Receiver
from deployer.webhook.signing import sign_headers
from deployer.webhook.sources import FetchSettings

SECRET = b"s3cret-for-tests-0123456789abcdef"


@dataclass(frozen=True)
class Tls:
    """A throwaway CA and a certificate for 127.0.0.1/localhost signed by it."""

    ca: Path
    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        """For a loopback HTTPS server."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(self.cert), str(self.key))
        return context


def make_tls(folder: Path) -> Tls:
    """Generate a CA and a server certificate with cryptography (EC P-256, valid for a day)."""
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "deployer test CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                    x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    tls = Tls(folder / "ca.pem", folder / "cert.pem", folder / "key.pem")
    tls.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    tls.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    tls.key.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                          serialization.NoEncryption())
    )  # fmt: skip
    tls.key.chmod(0o600)
    return tls


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def serving(server: http.server.HTTPServer, scheme: str = "http") -> Iterator[str]:
    """Run a loopback HTTP server in a thread; yields its base URL; stops it afterwards."""
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"{scheme}://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@contextmanager
def https_files(folder: Path, tls: Tls) -> Iterator[str]:
    """Serve folder over HTTPS on loopback; yields the base URL."""
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Quiet, directory=str(folder))
    )
    server.socket = tls.server_context().wrap_socket(server.socket, server_side=True)
    with serving(server, "https") as url:
        yield url


@contextmanager
def running_receiver(
    paths: tuple[str, ...],
    fetching: FetchSettings,
    tls: ssl.SSLContext | None = None,
    **settings: Any,
) -> Iterator[Receiver]:
    """The real receiver on a free loopback port, in this process (so `responses` sees GitLab calls)."""
    log: list[str] = []
    state = Path(tempfile.mkdtemp(prefix="deployer-receiver-"))
    settings.setdefault("replay_file", state / "webhook-requests")
    receiver = Receiver(
        ("127.0.0.1", 0),
        ReceiverSettings(secret=SECRET, paths=paths, fetching=fetching, **settings),
        log.append,
        tls,
    )
    receiver.log_lines = log  # type: ignore[attr-defined]
    thread = threading.Thread(target=receiver.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        receiver.stopping.set()
        receiver.shutdown()
        receiver.server_close()
        receiver.deployments.stop("test over")
        thread.join(timeout=10)
        shutil.rmtree(state, ignore_errors=True)


def tarball(folder: Path, name: str, files: dict[str, str], *, evil: str | None = None) -> Path:
    """A .tar.gz with the given files (and optionally a member named `evil`, like ../x)."""
    import io

    path = folder / name
    with tarfile.open(path, "w:gz") as tar:
        for member, text in {**files, **({evil: "pwned\n"} if evil else {})}.items():
            data = text.encode()
            info = tarfile.TarInfo(member)
            info.size, info.mode, info.mtime = len(data), 0o644, int(time.time())
            tar.addfile(info, io.BytesIO(data))
    return path


def request(
    receiver: Receiver,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    sign: bool = True,
) -> tuple[int, dict[str, Any]]:
    """One raw HTTP request to the receiver: (status, JSON answer)."""  # fmt: skip
    host, port = receiver.server_address[:2]
    connection = http.client.HTTPConnection(str(host), int(port), timeout=30)
    sent = dict(headers or {})
    if sign and headers is None:
        sent.update(sign_headers(SECRET, method, path, body or b"", time.time()))
    if body is not None:
        sent.setdefault("Content-Type", "application/json")
    connection.request(method, path, body=body, headers=sent)
    response = connection.getresponse()
    status, raw = response.status, response.read()
    connection.close()
    return status, json.loads(raw)


def wait_final(receiver: Receiver, deploy_id: str, timeout: float = 60) -> dict[str, Any]:
    """Poll the status endpoint until the deploy ends (bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, answer = request(receiver, "GET", f"/deploys/{deploy_id}")
        assert status == 200, answer
        if answer["state"] in ("deployed", "failed"):
            return answer
        time.sleep(0.1)
    raise AssertionError(f"deploy {deploy_id} did not finish within {timeout} s")
