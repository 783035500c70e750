"""Locate the real external peers (DCMTK, GDCM, OpenJPH, Orthanc) for interop tests, and make test
certificates with openssl.

pynetdicom installs Python scripts named ``storescu``/``storescp`` that can
shadow DCMTK's programs on PATH, so DCMTK tools are accepted only when their
``--version`` output names DCMTK.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from functools import cache
from pathlib import Path

import pytest

_DEBIAN_PACKAGE = {"dcmtk": "dcmtk", "gdcm": "libgdcm-tools", "openjph": "openjph-tools", "orthanc": "orthanc"}


def _candidates(name: str) -> list[str]:
    found = []
    for folder in os.environ.get("PATH", "").split(os.pathsep) + ["/usr/bin", "/usr/sbin", "/usr/local/bin"]:
        path = os.path.join(folder, name)
        if os.path.isfile(path) and os.access(path, os.X_OK) and path not in found:
            found.append(path)
    return found


@cache
def dcmtk(name: str) -> str | None:
    """Path of DCMTK's program `name` (e.g. ``storescu``), or None."""
    for path in _candidates(name):
        try:
            out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if "dcmtk" in (out.stdout + out.stderr).lower():
            return path
    return None


@cache
def program(name: str) -> str | None:
    """Path of a non-DCMTK peer program (``gdcmconv``, ``ojph_expand``, ``Orthanc``)."""
    return shutil.which(name) or next(iter(_candidates(name)), None)


def require_dcmtk(name: str) -> str:
    """The DCMTK program's path, or skip the test with the package to install."""
    path = dcmtk(name)
    if path is None:
        pytest.skip(f"DCMTK's {name} is not installed (Debian package 'dcmtk')")
    return path


def require(name: str, suite: str) -> str:
    """A peer program's path, or skip naming the Debian package of `suite`."""
    path = program(name)
    if path is None:
        pytest.skip(f"{name} is not installed (Debian package '{_DEBIAN_PACKAGE[suite]}')")
    return path


def openssl(*args: str, cwd: Path) -> None:
    """Run the openssl command in `cwd`, or skip the test naming its package."""
    path = shutil.which("openssl")
    if path is None:
        pytest.skip("openssl is not installed (Debian package 'openssl')")
    subprocess.run([path, *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca(folder: Path, name: str) -> None:
    """`name`.key and `name`.pem in `folder`: a test CA valid two days, with the keyUsage that
    Python 3.13's default TLS contexts require of a CA."""
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2", "-subj", f"/CN={name}",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=folder)


def issue(folder: Path, name: str, ca: str, *, ip: str = "127.0.0.1", common_name: str | None = None) -> None:
    """`name`.key and `name`.pem in `folder`: a certificate for `ip` and localhost signed by `ca`,
    its subject ``CN=`` `common_name` (default `name`)."""
    openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={common_name or name}", cwd=folder)
    (folder / f"{name}.ext").write_text(f"subjectAltName=IP:{ip},DNS:localhost\n")
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-CAcreateserial",
            "-days", "2", "-sha256", "-extfile", f"{name}.ext", "-out", f"{name}.pem", cwd=folder)
