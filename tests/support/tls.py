"""Test certificates made by the `openssl` command: a CA, a server certificate for
127.0.0.1 it signed, and client certificates it signed, each with its own common name."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

_EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


@dataclass(frozen=True)
class Pair:
    """A PEM certificate and its unencrypted PEM key."""

    cert: Path
    key: Path

    @property
    def files(self) -> tuple[str, str]:
        """``(certfile, keyfile)``, as the receivers' ``tls=`` takes them."""
        return str(self.cert), str(self.key)


class CertAuthority:
    """A certificate authority in ``directory``; every certificate it makes is signed by it."""

    def __init__(self, directory: Path, name: str = "fastbuf-test-ca") -> None:
        self.openssl = shutil.which("openssl")
        if self.openssl is None:
            pytest.skip("the openssl command is needed to make test certificates")
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.name = name
        self.cert = directory / f"{name}.pem"
        self.key = directory / f"{name}.key"
        self._serial = 1
        self._run(
            "req", "-x509", *_EC, "-keyout", str(self.key), "-out", str(self.cert),
            "-days", "1", "-subj", f"/CN={name}",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        )  # fmt: skip

    def server(self, name: str = "server") -> Pair:
        """A server certificate for 127.0.0.1 (its subjectAltName)."""
        extensions = "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"
        return self._issue(name, "127.0.0.1", extensions)

    def client(self, common_name: str) -> Pair:
        """A client certificate whose subject's common name is ``common_name``."""
        return self._issue(common_name, common_name, "extendedKeyUsage=clientAuth\n")

    def _issue(self, stem: str, common_name: str, extensions: str) -> Pair:
        pair = Pair(self.directory / f"{stem}.pem", self.directory / f"{stem}.key")
        csr = self.directory / f"{stem}.csr"
        ext = self.directory / f"{stem}.ext"
        ext.write_text(extensions)
        self._run(
            "req", "-new", *_EC, "-keyout", str(pair.key), "-out", str(csr),
            "-subj", f"/CN={common_name}",
        )  # fmt: skip
        self._serial += 1
        self._run(
            "x509", "-req", "-in", str(csr), "-CA", str(self.cert), "-CAkey", str(self.key),
            "-set_serial", str(self._serial), "-days", "1", "-out", str(pair.cert),
            "-extfile", str(ext),
        )  # fmt: skip
        pair.key.chmod(0o600)
        return pair

    def _run(self, *args: str) -> None:
        assert self.openssl is not None
        proc = subprocess.run([self.openssl, *args], capture_output=True, timeout=60)
        if proc.returncode != 0:
            pytest.skip(f"openssl could not make a certificate: {proc.stderr[-300:]!r}")
