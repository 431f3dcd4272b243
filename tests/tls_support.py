"""TLS for the tests: a throw-away certificate authority and servers that speak TLS.

Certificates are made with the ``openssl`` command line tool (present wherever OpenSSL
is, and on every Debian-like system through ``ca-certificates``), so the tests need no
Python package beyond the ``test`` extra. The configuration is written here, not read
from the system's ``openssl.cnf``, and the certificates carry the extensions a strict
verifier (Python 3.13's ``VERIFY_X509_STRICT``) asks for.

A TLS server is an :class:`~pyprocsync.tools.server.EmbeddedServer` with a TLS port beside its
plain one: the plain port is what ``EmbeddedServer`` checks readiness on, and what the
tests use to look at the server (``CLIENT LIST``, ``CLIENT KILL``); everything under test
connects to the TLS port only.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlencode

from pyprocsync.tools.server import EmbeddedServer, ServerError

#: Debian's server (``apt-get install redis-server``), built with TLS.
DEBIAN_SERVER = "/usr/bin/redis-server"

_CONFIG = """\
[req]
distinguished_name = dn
prompt = no

[dn]
CN = pyprocsync test

[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always

[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth, clientAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid

[client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""

#: An elliptic-curve key: made in a millisecond, unlike RSA.
_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


@dataclass(frozen=True)
class Certificates:
    """PEM files: a CA, a server certificate it signed (SAN 127.0.0.1 and localhost), a
    client certificate it signed, and a second CA that signed none of them."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path


def openssl_binary() -> str | None:
    """The ``openssl`` tool on ``PATH``, or None."""
    return shutil.which("openssl")


def _openssl(*args: str, cwd: Path) -> None:
    binary = openssl_binary()
    if binary is None:
        raise RuntimeError("the openssl command line tool is not on PATH")
    done = subprocess.run(
        [binary, *args], cwd=cwd, capture_output=True, text=True, timeout=30, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {done.stderr.strip()}")


def _make_ca(directory: Path, stem: str, name: str) -> tuple[Path, Path]:
    cert, key = directory / f"{stem}.crt", directory / f"{stem}.key"
    _openssl(
        "req", "-x509", "-config", "openssl.cnf", "-extensions", "ca", *_KEY,
        "-keyout", key.name, "-out", cert.name, "-days", "2", "-subj", f"/CN={name}",
        cwd=directory,
    )  # fmt: skip
    return cert, key


def _make_leaf(directory: Path, stem: str, extensions: str, ca: tuple[Path, Path]) -> None:
    _openssl(
        "req", "-new", "-config", "openssl.cnf", *_KEY,
        "-keyout", f"{stem}.key", "-out", f"{stem}.csr", "-subj", f"/CN={stem}",
        cwd=directory,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", f"{stem}.csr", "-CA", ca[0].name, "-CAkey", ca[1].name,
        "-set_serial", str(secrets.randbits(63)), "-days", "2",
        "-extfile", "openssl.cnf", "-extensions", extensions, "-out", f"{stem}.crt",
        cwd=directory,
    )  # fmt: skip


def make_certificates(directory: Path) -> Certificates:
    """Write a CA, server and client certificates and a second CA into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "openssl.cnf").write_text(_CONFIG)
    ca = _make_ca(directory, "ca", "pyprocsync test CA")
    other_ca, _ = _make_ca(directory, "other-ca", "pyprocsync other CA")
    _make_leaf(directory, "server", "server", ca)
    _make_leaf(directory, "client", "client", ca)
    for key in directory.glob("*.key"):
        key.chmod(0o600)
    return Certificates(
        ca=ca[0],
        server_cert=directory / "server.crt",
        server_key=directory / "server.key",
        client_cert=directory / "client.crt",
        client_key=directory / "client.key",
        other_ca=other_ca,
    )


def free_port(bind: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind((bind, 0))
        return int(probe.getsockname()[1])


def tls_args(certs: Certificates, tls_port: int) -> list[str]:
    """Server options for a TLS port that requires client certificates of ``certs.ca``."""
    return [
        "--tls-port", str(tls_port),
        "--tls-cert-file", str(certs.server_cert),
        "--tls-key-file", str(certs.server_key),
        "--tls-ca-cert-file", str(certs.ca),
        "--tls-auth-clients", "yes",
    ]  # fmt: skip


def tls_url(
    port: int,
    certs: Certificates,
    *,
    host: str = "127.0.0.1",
    ca: Path | None = None,
    client_cert: bool = True,
    password: str | None = None,
) -> str:
    """A ``rediss://`` URL carrying the TLS options as query arguments (redis-py passes
    them to its ``SSLConnection``): CA ``ca`` (default ``certs.ca``) and, with
    ``client_cert``, the client certificate and key."""
    query = {"ssl_cert_reqs": "required", "ssl_ca_certs": str(ca or certs.ca)}
    if client_cert:
        query["ssl_certfile"] = str(certs.client_cert)
        query["ssl_keyfile"] = str(certs.client_key)
    auth = f":{quote(password, safe='')}@" if password else ""
    return f"rediss://{auth}{host}:{port}/0?{urlencode(query)}"


def tls_unsupported_reason(binary: str) -> str | None:
    """Why ``binary`` cannot serve TLS (its own words), or None if it was built with TLS.

    Starts it on a TLS port without certificates: a server built without TLS says so
    and exits ("Failed finding TLS support"); one built with it fails on the missing
    certificate instead. Anything else counts as TLS-capable, so that a wrong guess
    shows up as failing tests, never as tests left out.
    """
    with tempfile.TemporaryDirectory(prefix="pyprocsync-tls-probe-") as workdir:
        argv = [binary, "--port", "0", "--tls-port", str(free_port())]
        argv += ["--save", "", "--appendonly", "no", "--dir", workdir]
        try:
            done = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
                cwd=workdir,
                env={**os.environ, "LC_ALL": "C"},
            )
        except subprocess.TimeoutExpired:
            return None  # it started: it took the TLS port (and would need stopping)
    said = [
        line.split("#", 1)[-1].strip()
        for line in (done.stdout + done.stderr).splitlines()
        if "TLS support" in line or "connection type tls" in line
    ]
    return "; ".join(said) or None


def start_tls_server(binary: str, certs: Certificates) -> tuple[EmbeddedServer, int]:
    """Start ``binary`` with a TLS port; retry if a port picked as free was taken."""
    for _attempt in range(3):
        port = free_port()
        instance = EmbeddedServer(binary=binary, args=tls_args(certs, port))
        try:
            return instance.start(), port
        except ServerError as exc:
            if "in use" not in str(exc).lower():
                raise
    raise ServerError("no free port pair found for the TLS server")
