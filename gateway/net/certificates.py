"""When the TLS certificates the gateway uses expire.

An expired certificate stops a hospital's images as surely as a broken
cable: modalities refuse the receiver's, archives refuse ours, and Python's
TLS loads either without a word about its dates.  The service reads the
``notAfter`` of every certificate its configuration names (the receiver's
own and the CAs its callers must chain to; each DICOM destination's client
certificate and CAs; each DICOMweb destination's CAs), logs those within
:data:`WARN_DAYS` of expiry or past it, exports them as a Prometheus gauge
and makes ``/readyz`` fail once the receiver's own has expired.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID

from gateway.config import Config
from gateway.logs import get_logger

__all__ = ["WARN_DAYS", "CertificateDate", "configured", "dates", "read_dates", "report"]

WARN_DAYS = 30
"""A certificate expiring within this many days is logged as a warning (expired: an error)."""

_log = get_logger("tls")


@dataclass(frozen=True, slots=True)
class CertificateDate:
    """One certificate of a file the configuration names, and when it expires (seconds since the epoch)."""

    use: str  # "server", "server_ca", "destination <name>", "destination_ca <name>"
    path: Path
    subject: str
    not_after: float

    def days_left(self, now: float) -> float:
        return (self.not_after - now) / 86400.0

    def state(self, now: float) -> str:
        """``expired``, ``expiring`` (within WARN_DAYS) or ``valid``."""
        days = self.days_left(now)
        return "expired" if days <= 0 else "expiring" if days <= WARN_DAYS else "valid"


def configured(config: Config) -> list[tuple[str, Path]]:
    """(use, file) of every certificate file the configuration names, each once per use."""
    files: list[tuple[str, Path]] = []
    tls = config.server.tls
    if tls is not None:
        files.append(("server", tls.certificate))
        if tls.ca_certificates is not None:
            files.append(("server_ca", tls.ca_certificates))
    for dest in config.destinations:
        if dest.tls is not None:
            if dest.tls.certificate is not None:
                files.append((f"destination {dest.name}", dest.tls.certificate))
            files.append((f"destination_ca {dest.name}", dest.tls.ca_certificates))
        if dest.ca_certificates is not None:
            files.append((f"destination_ca {dest.name}", dest.ca_certificates))
    return files


def _subject(certificate: x509.Certificate) -> str:
    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else certificate.subject.rfc4514_string()


def read_dates(path: Path) -> list[tuple[str, float]]:
    """(subject, notAfter) of every certificate of a PEM file, in its order.

    Raises OSError when the file cannot be read and ValueError when it holds
    no certificate that can be parsed.
    """
    certificates = x509.load_pem_x509_certificates(path.read_bytes())
    return [(_subject(c), c.not_valid_after_utc.timestamp()) for c in certificates]


def dates(config: Config) -> list[CertificateDate]:
    """Every certificate the configuration names (a file that cannot be read is logged and left out)."""
    found = []
    for use, path in configured(config):
        try:
            read = read_dates(path)
        except (OSError, ValueError) as exc:
            _log.warning("%s certificates in %s: cannot read their dates: %s", use, path, exc)
            continue
        found += [CertificateDate(use, path, subject, not_after) for subject, not_after in read]
    return found


def report(found: list[CertificateDate], now: float) -> None:
    """Log each certificate that has expired (error) or expires within WARN_DAYS (warning)."""
    for cert in found:
        days, state = cert.days_left(now), cert.state(now)
        if state == "expired":
            _log.error("%s certificate %r in %s expired %.0f day(s) ago: peers refuse it; replace it and reload",
                       cert.use, cert.subject, cert.path, -days)
        elif state == "expiring":
            _log.warning("%s certificate %r in %s expires in %.1f day(s): replace it and reload",
                         cert.use, cert.subject, cert.path, days)
