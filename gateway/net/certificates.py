"""When the TLS certificates the gateway uses expire.

An expired certificate stops a hospital's images as surely as a broken
cable: modalities refuse the receiver's, archives refuse ours, and Python's
TLS loads either without a word about its dates.  So does one not yet valid
(a renewed certificate installed before its ``notBefore``).  The service
reads the dates of every certificate its configuration names (the receiver's
own and the CAs its callers must chain to; each DICOM destination's client
certificate and CAs; each DICOMweb destination's CAs; the console's), logs
those within :data:`WARN_DAYS` of expiry, past it or not yet valid, exports the expiry as
a Prometheus gauge and makes ``/readyz`` fail while the receiver's own has
expired or is not yet valid; a reload does not take a receiver certificate
callers would refuse (:func:`refused_server_certificate`).  The private key
files it names, and the console's token file, are looked at too: one that
other users may read is logged.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from gateway.config import Config
from gateway.errors import ConfigError
from gateway.logs import get_logger

__all__ = ["WARN_DAYS", "CertificateDate", "configured", "dates", "exposed_keys", "read_dates",
           "refused_server_certificate", "report"]

WARN_DAYS = 30
"""A certificate expiring within this many days is logged as a warning (expired: an error)."""

_log = get_logger("tls")


@dataclass(frozen=True, slots=True)
class CertificateDate:
    """One certificate of a file the configuration names, and when it expires (seconds since the epoch)."""

    use: str  # "server", "server_ca", "destination <name>", "destination_ca <name>", "web" (the console's)
    path: Path
    subject: str
    not_after: float
    not_before: float = 0.0
    fingerprint: str = ""  # SHA-256 of the certificate (DER), hex: the same certificate under another file name

    def unusable(self, now: float) -> str | None:
        """Why peers refuse it now (expired, or not yet valid), or None while its dates allow it."""
        if self.not_yet_valid(now):
            return f"is not valid before {_utc(self.not_before)}"
        if self.state(now) == "expired":
            return f"expired on {_utc(self.not_after)}"
        return None

    def days_left(self, now: float) -> float:
        return (self.not_after - now) / 86400.0

    def not_yet_valid(self, now: float) -> bool:
        """True before its ``notBefore``: peers refuse it as they refuse an expired one."""
        return now < self.not_before

    def state(self, now: float) -> str:
        """``expired``, ``expiring`` (within WARN_DAYS) or ``valid``."""
        days = self.days_left(now)
        return "expired" if days <= 0 else "expiring" if days <= WARN_DAYS else "valid"


def _utc(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def refused_server_certificate(found: list[CertificateDate], running: list[CertificateDate],
                               now: float) -> ConfigError | None:
    """Why a configuration whose certificates are `found` must not replace the running one, or None.

    A receiver certificate that callers would refuse (expired, or not yet
    valid) is not taken on reload: the running one stays until a usable one
    is installed.  The same certificate as the one running is let through
    (only its dates are said), so that routes and destinations can still be
    changed while the renewal is awaited.
    """
    in_use = {cert.fingerprint for cert in running if cert.use == "server"}
    for cert in found:
        if cert.use != "server" or cert.fingerprint in in_use:
            continue
        why = cert.unusable(now)
        if why is not None:
            return ConfigError("server.tls.certificate",
                               f"{cert.path}: certificate {cert.subject!r} {why}: callers would refuse it; "
                               "install a valid one and reload")
    return None


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
    if config.web is not None and config.web.certificate is not None:
        files.append(("web", config.web.certificate))
    return files


def _subject(certificate: x509.Certificate) -> str:
    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else certificate.subject.rfc4514_string()


def read_dates(path: Path) -> list[tuple[str, float]]:
    """(subject, notAfter) of every certificate of a PEM file, in its order.

    Raises OSError when the file cannot be read and ValueError when it holds
    no certificate that can be parsed.
    """
    return [(subject, not_after) for subject, _, not_after, _ in _read(path)]


def _read(path: Path) -> list[tuple[str, float, float, str]]:
    """(subject, notBefore, notAfter, SHA-256 fingerprint) of every certificate of a PEM file, in its order."""
    certificates = x509.load_pem_x509_certificates(path.read_bytes())
    return [(_subject(c), c.not_valid_before_utc.timestamp(), c.not_valid_after_utc.timestamp(),
             c.fingerprint(hashes.SHA256()).hex()) for c in certificates]


def exposed_keys(config: Config) -> list[tuple[str, Path, int]]:
    """(key, file, mode) of each secret file the configuration names that others may read or change.

    The secrets are the private keys, the console's token
    (``[web] token_file``) and the DICOMweb destinations' passwords and
    tokens (``auth``).  A file readable by its group only (0640, as
    Debian's ``ssl-cert`` group has it) is taken; one readable by every user
    of the machine, or writable by others than its owner, is not what
    docs/network.md and docs/console.md ask (0600).
    """
    keys: list[tuple[str, Path]] = []
    if config.server.tls is not None:
        keys.append(("server.tls.private_key", config.server.tls.private_key))
    for dest in config.destinations:
        if dest.tls is not None and dest.tls.private_key is not None:
            keys.append((f"destination {dest.name}: tls.private_key", dest.tls.private_key))
        if dest.auth is not None:  # a DICOMweb archive's password or token
            field = "password_file" if dest.auth.kind == "basic" else "token_file"
            keys.append((f"destination {dest.name}: auth.{field}", dest.auth.secret_file))
    if config.web is not None and config.web.token_file is not None:
        keys.append(("web.token_file", config.web.token_file))
    if config.web is not None and config.web.private_key is not None:
        keys.append(("web.private_key", config.web.private_key))
    exposed = []
    for key, path in keys:
        try:
            mode = path.stat().st_mode & 0o777
        except OSError:
            continue  # the configuration's own check says why it cannot be read
        if mode & 0o027:
            exposed.append((key, path, mode))
    return exposed


def dates(config: Config) -> list[CertificateDate]:
    """Every certificate the configuration names (a file that cannot be read is logged and left out).

    Read at start, at each reload and by ``check-config``: a private key file
    others may read or change (:func:`exposed_keys`) is logged then too.
    """
    for key, path, mode in exposed_keys(config):
        _log.warning("%s: %s has mode %04o: other users of this machine can %s it; make it readable by the "
                     "gateway's user only (chmod 600)", key, path, mode, "read" if mode & 0o004 else "change")
    found = []
    for use, path in configured(config):
        try:
            read = _read(path)
        except (OSError, ValueError) as exc:
            _log.warning("%s certificates in %s: cannot read their dates: %s", use, path, exc)
            continue
        found += [CertificateDate(use, path, subject, not_after, not_before, fingerprint)
                  for subject, not_before, not_after, fingerprint in read]
    return found


def report(found: list[CertificateDate], now: float) -> None:
    """Log each certificate that has expired or is not yet valid (error), or expires within WARN_DAYS (warning)."""
    for cert in found:
        days, state = cert.days_left(now), cert.state(now)
        if cert.not_yet_valid(now):
            _log.error("%s certificate %r in %s is not valid for another %.1f day(s): peers refuse it until then; "
                       "replace it and reload", cert.use, cert.subject, cert.path, (cert.not_before - now) / 86400.0)
        elif state == "expired":
            _log.error("%s certificate %r in %s expired %.0f day(s) ago: peers refuse it; replace it and reload",
                       cert.use, cert.subject, cert.path, -days)
        elif state == "expiring":
            _log.warning("%s certificate %r in %s expires in %.1f day(s): replace it and reload",
                         cert.use, cert.subject, cert.path, days)
