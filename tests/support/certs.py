"""Test certificates made at test time: a throwaway CA and a server certificate it signs.

Contract: test code only. Uses the ``openssl`` command line (the ``cryptography`` package is not
a dependency). Writes PEM files into the directory it is given and nothing else; the keys are
unencrypted and must never leave a test's temporary directory.
"""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = ["TestCerts", "make_certs"]


@dataclass(frozen=True)
class TestCerts:
    """Paths of the PEM files: the CA certificate, and the server's certificate and key."""

    __test__ = False  # not a pytest test class

    ca_file: str
    cert_file: str
    key_file: str


def _openssl(*args: str, cwd: Path) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise RuntimeError("the openssl command is needed to make test certificates")
    subprocess.run([openssl, *args], cwd=cwd, check=True, capture_output=True)


def _alt_name(name: str) -> str:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return f"DNS:{name}"
    return f"IP:{name}"


def make_certs(directory: Path, names: list[str], *, common_name: str | None = None) -> TestCerts:
    """Make a CA and a server certificate for ``names`` (subjectAltName) in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=mta-engine test CA",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=directory)
    _openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr",
             "-subj", f"/CN={common_name or names[0]}", cwd=directory)
    (directory / "server.ext").write_text(
        "basicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\n"
        f"subjectAltName={','.join(_alt_name(n) for n in names)}\n"
    )
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "server.ext", cwd=directory)
    return TestCerts(str(directory / "ca.pem"), str(directory / "server.pem"), str(directory / "server.key"))
