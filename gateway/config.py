"""The gateway's configuration: one TOML file, validated once at start.

The file is read into frozen dataclasses; every unknown key and every bad
value raises :class:`~gateway.errors.ConfigError` naming the key, e.g.
``destinations[1].port: must be 1..65535, got 70000``.  Relative paths are
resolved against the folder of the configuration file, so a config and its
spool/archive folders can be moved together.

Layout (see ``config/*.toml`` for commented examples)::

    [server]        ae_title, host, port, allowed_callers, max_pdu, max_associations,
                    association_request_seconds, idle_seconds, max_connections,
                    max_connections_per_address; an allowed_callers entry is an AE title, or
                    { ae_title, certificate_subject, addresses }
    [server.tls]    certificate, private_key, ca_certificates, require_client_certificate
    [spool]         directory, keep_done_hours, keep_record_days, keep_after_delivery, min_free_bytes
    [compression]   transfer_syntax, verify, processes, max_attempts, timeout_seconds, retry_seconds,
                    rescan_seconds, private_version (1 or 2, default 2), [compression.modality] overrides
    [retry]         max_attempts, base_seconds, cap_seconds, probe_seconds
    [forwarding]    batch, idle_release_seconds, rescan_seconds
    [policy]        malformed
    [logging]       level, file, max_bytes, backups
    [web]           host, port, token_file, unready_after_seconds, certificate, private_key
    [[destinations]] name, kind = "dicom" | "folder" | "dicomweb", ...
    [[routes]]      destinations, calling_ae, modality, sop_class

Without ``[[routes]]`` every instance goes to every destination.  With
routes, an instance goes to the destinations of every route it matches; a
route matches when each of its non-empty filters contains the instance's
value (an empty or absent filter matches anything).
"""

from __future__ import annotations

import ipaddress
import os
import re
import ssl
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.dicom.uids import GATEWAY_LOSSLESS_V1, NATIVE_SYNTAXES
from gateway.dicom.validate import ae_title_problem, is_valid_uid
from gateway.errors import CodecNotFoundError, ConfigError

__all__ = [
    "Config",
    "PolicyConfig",
    "ServerConfig",
    "ServerTls",
    "CallerAddresses", "CallerCertificate",
    "DestinationTls",
    "tls_context",
    "subject_pairs",
    "SpoolConfig",
    "CompressionConfig",
    "RetryConfig",
    "LoggingConfig",
    "Destination",
    "HttpAuth",
    "Route",
    "load_config",
    "parse_config",
    "KEEP",
    "PRIVATE_VERSION",
    "private_options",
]

KEEP = "keep"
"""The ``transfer_syntax`` value that forwards instances as received."""

PRIVATE_VERSION = 2
"""The version of our private syntax (gwl) the gateway writes unless ``private_version`` says otherwise.

Version 2 codes about 1 % smaller and codes frames of 1 MiB and more in
parallel stripes; version 1 is what releases that predate version 2 read.
"""

_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


# TLS 1.2 cipher suites of BCP 195 (RFC 9325 section 4.2): ephemeral key exchange and AEAD only.
# TLS 1.3 suites are all AEAD and stay OpenSSL's defaults.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL:!eNULL:!SHA1"

_SUBJECT_NAMES = {
    "commonname": "CN", "cn": "CN", "organizationname": "O", "o": "O", "organizationalunitname": "OU",
    "ou": "OU", "countryname": "C", "c": "C", "localityname": "L", "l": "L", "stateorprovincename": "ST",
    "st": "ST", "s": "ST", "emailaddress": "EMAILADDRESS", "domaincomponent": "DC", "dc": "DC",
    "serialnumber": "SERIALNUMBER", "uid": "UID", "userid": "UID",
}


def _subject_name(name: str) -> str:
    return _SUBJECT_NAMES.get(name.strip().lower().replace(" ", ""), name.strip().upper())


def subject_pairs(subject: str | tuple) -> tuple[tuple[str, str], ...]:
    """A certificate subject as sorted (attribute, value) pairs, whatever its spelling.

    Takes ``"CN=ct1.example,O=Hospital"`` (RFC 4514), ``"/O=Hospital/CN=ct1.example"``
    (``openssl -subj``), ``"O = Hospital, CN = ct1.example"`` (``openssl x509
    -subject``) or the subject tuple of :meth:`ssl.SSLSocket.getpeercert`; the
    order of the attributes does not matter.  Raises ``ValueError`` when a part
    is not ``name=value``.
    """
    if isinstance(subject, tuple):
        pairs = [(_subject_name(name), str(value)) for rdn in subject for name, value in rdn]
        return tuple(sorted(pairs))
    text = subject.strip()
    parts: list[str] = []
    if text.startswith("/"):
        parts = [p for p in text[1:].split("/") if p]
    else:
        current = ""
        escaped = False
        for char in text:
            if escaped:
                current += char
                escaped = False
            elif char == "\\":
                escaped = True
            elif char in ",+":
                parts.append(current)
                current = ""
            else:
                current += char
        parts.append(current)
    pairs = []
    for part in parts:
        name, sep, value = part.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise ValueError(f"{part.strip()!r} is not name=value")
        pairs.append((_subject_name(name), value.strip()))
    return tuple(sorted(pairs))


def tls_context(*, server: bool, certificate: Path | None, private_key: Path | None,
                ca_certificates: Path | None, require_peer_certificate: bool = True,
                check_hostname: bool = True, key: str = "") -> ssl.SSLContext:
    """An :class:`ssl.SSLContext` per PS3.15 B.12 and BCP 195; errors name the key under `key`.

    TLS 1.2 at least (1.3 preferred: OpenSSL offers it first), AEAD cipher
    suites only, no compression, no renegotiation.  A server context asks for
    the client's certificate (required or optional); a client context always
    checks the server's certificate against `ca_certificates`.
    """
    def where(name: str) -> str:
        return f"{key}.{name}" if key else name

    for name, path in (("certificate", certificate), ("private_key", private_key),
                       ("ca_certificates", ca_certificates)):
        if path is None:
            continue
        try:
            text = path.read_bytes()
        except OSError as exc:
            raise ConfigError(where(name), f"cannot read {path}: {exc.strerror or exc}") from exc
        marker = b"PRIVATE KEY-----" if name == "private_key" else b"-----BEGIN CERTIFICATE-----"
        if marker not in text:
            raise ConfigError(where(name), f"{path} holds no PEM {'private key' if name == 'private_key' else 'certificate'}")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    if server:
        context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    if ca_certificates is not None:
        try:
            context.load_verify_locations(cafile=str(ca_certificates))
        except (ssl.SSLError, OSError, ValueError) as exc:
            raise ConfigError(where("ca_certificates"), f"cannot load {ca_certificates}: {exc}") from exc
    if certificate is not None and private_key is not None:
        try:
            context.load_cert_chain(str(certificate), str(private_key))
        except (ssl.SSLError, OSError, ValueError) as exc:
            raise ConfigError(where("private_key"),
                              f"{private_key} cannot be used with {certificate} (no match, or encrypted): {exc}") from exc
    if server:
        context.verify_mode = ssl.CERT_REQUIRED if require_peer_certificate else ssl.CERT_OPTIONAL
    else:
        context.check_hostname = check_hostname
        context.verify_mode = ssl.CERT_REQUIRED
    return context


@dataclass(frozen=True, slots=True)
class ServerTls:
    """``[server.tls]``: DICOM TLS on the receiver."""

    certificate: Path
    private_key: Path
    ca_certificates: Path | None = None  # the callers' certificates must chain to these
    require_client_certificate: bool = True

    def context(self) -> ssl.SSLContext:
        return tls_context(server=True, certificate=self.certificate, private_key=self.private_key,
                           ca_certificates=self.ca_certificates,
                           require_peer_certificate=self.require_client_certificate, key="server.tls")


@dataclass(frozen=True, slots=True)
class CallerCertificate:
    """An ``allowed_callers`` entry binding a calling AE title to a certificate subject."""

    ae_title: str
    certificate_subject: tuple[tuple[str, str], ...]  # sorted (attribute, value) pairs, see subject_pairs


@dataclass(frozen=True, slots=True)
class CallerAddresses:
    """An ``allowed_callers`` entry binding a calling AE title to the networks it may call from."""

    ae_title: str
    networks: tuple[str, ...]  # addresses or CIDR networks, normalised ("10.0.0.5/32", "10.1.0.0/16")


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Where and as whom the gateway listens, and what one peer may take."""

    ae_title: str = "GATEWAY"
    host: str = "127.0.0.1"
    port: int = 11112
    allowed_callers: tuple[str, ...] = ()  # every allowed calling AE title (bound ones included)
    max_pdu: int = 1_048_576  # advertised and enforced; a larger PDU aborts the association unread
    max_associations: int = 16  # associations served at once; more are rejected (transient, the sender retries)
    association_request_seconds: float = 10.0  # connect (and TLS handshake) to complete A-ASSOCIATE-RQ
    idle_seconds: float = 60.0  # an association (or a PDU) silent this long is aborted
    max_connections: int = 256  # TCP connections held at once, associated or not
    max_connections_per_address: int = 32  # of them from one remote address
    tls: ServerTls | None = None
    caller_certificates: tuple[CallerCertificate, ...] = ()  # AE titles only these certificates may use
    caller_addresses: tuple[CallerAddresses, ...] = ()  # AE titles only these networks may use


@dataclass(frozen=True, slots=True)
class SpoolConfig:
    """Where the durable queue lives, and how long finished jobs are remembered."""

    directory: Path
    keep_done_hours: float = 168.0  # finished job manifests older than this are deleted (hourly sweep)
    keep_record_days: float = 3650.0  # the proof record forgets instances received longer ago
    min_free_bytes: int = 256 << 20  # below this free space a C-STORE is answered 0xA700; half is the worker's reserve
    keep_after_delivery: bool = True  # keep the received copy once delivered everywhere (for keep_done_hours)


@dataclass(frozen=True, slots=True)
class CompressionConfig:
    """Which syntax instances are recompressed to; UIDs or :data:`KEEP`."""

    transfer_syntax: str = KEEP
    modality: dict[str, str] = field(default_factory=dict)
    verify: bool = True
    processes: int = field(default_factory=lambda: available_cores())  # worker processes; 0 = threads in the service
    max_attempts: int = 3  # failed processing attempts before the original is forwarded as received
    retry_seconds: float = 5.0  # wait after the first failed attempt; doubled after each further one
    rescan_seconds: float = 30.0  # how often the worker looks for received instances it was not told about
    timeout_seconds: float = 600.0  # an instance still unfinished this long in a worker process is a failed attempt
    private_version: int = PRIVATE_VERSION  # version of our private syntax written: 2, or 1 for older readers

    @property
    def encode_options(self) -> dict[str, dict[str, Any]]:
        """Encoder options by transfer syntax UID, as :func:`gateway.pipeline.recompress` takes them."""
        return private_options(self.private_version)

    def retry_delay(self, attempts: int) -> float:
        """Seconds to wait after the `attempts`-th failed processing attempt."""
        return self.retry_seconds * (2 ** max(0, attempts - 1))

    def target_for(self, modality: str | None) -> str:
        """Target syntax UID (or :data:`KEEP`) for an instance of `modality`."""
        if modality and modality in self.modality:
            return self.modality[modality]
        return self.transfer_syntax


@dataclass(frozen=True, slots=True)
class RetryConfig:
    """Exponential backoff of transient delivery failures."""

    max_attempts: int = 50
    base_seconds: float = 2.0
    cap_seconds: float = 300.0
    probe_seconds: float = 5.0  # while a destination fails, it is tried this often with its soonest job

    def delay(self, attempts: int) -> float:
        """Seconds to wait after the `attempts`-th failed attempt."""
        # 2**64 seconds passes any cap; a larger power would overflow the float after a long outage
        return min(self.cap_seconds, self.base_seconds * (2 ** min(max(0, attempts - 1), 64)))


@dataclass(frozen=True, slots=True)
class WebConfig:
    """The HTTP endpoints (metrics, health); absent from the config: off."""

    host: str = "127.0.0.1"
    port: int = 8080
    token_file: Path | None = None  # required when `host` is not a loopback address
    unready_after_seconds: float = 300.0  # a destination failing this long makes /readyz answer 503
    certificate: Path | None = None  # with private_key: the console is served over HTTPS (TLS 1.2 at least)
    private_key: Path | None = None

    @property
    def https(self) -> bool:
        return self.certificate is not None

    def context(self) -> ssl.SSLContext | None:
        """The console's TLS context (None over plain HTTP); :class:`ConfigError` naming the key if unusable.

        The same protocol versions and cipher suites as DICOM TLS; no client
        certificate is asked for (a browser would prompt for one).
        """
        if self.certificate is None or self.private_key is None:
            return None
        context = tls_context(server=True, certificate=self.certificate, private_key=self.private_key,
                              ca_certificates=None, require_peer_certificate=False, key="web")
        context.verify_mode = ssl.CERT_NONE
        return context

    def token(self) -> str | None:
        """The bearer token, read from `token_file` (None without one)."""
        if self.token_file is None:
            return None
        try:
            token = self.token_file.read_text().strip()
        except OSError as exc:
            raise ConfigError("web.token_file", f"cannot read {self.token_file}: {exc}") from exc
        if not token:
            raise ConfigError("web.token_file", f"{self.token_file} is empty")
        return token


@dataclass(frozen=True, slots=True)
class ForwardingConfig:
    """How the forwarders take their work; the same for every destination."""

    batch: int = 32  # jobs taken from the queue at once (one association for all of them)
    idle_release_seconds: float = 5.0  # an association unused this long is released
    rescan_seconds: float = 30.0  # how often the queue on disk is read again for jobs not handed over


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    """Log level and optional log file (stderr always), and how the file is rotated."""

    level: str = "INFO"
    file: Path | None = None
    max_bytes: int = 64 * 1024 * 1024  # the file is rotated past this size; 0: never (an outside logrotate)
    backups: int = 8  # rotated files kept: <file>.1 (newest) to <file>.<backups>


_LOGGING = LoggingConfig()


@dataclass(frozen=True, slots=True)
class HttpAuth:
    """Credentials for a DICOMweb destination, read from a file at each request (never logged)."""

    kind: str  # "basic" | "bearer"
    secret_file: Path  # the password (basic) or the token (bearer)
    username: str = ""

    def header(self) -> str:
        """The ``Authorization`` header's value; :class:`ConfigError` if the file cannot be read or is empty."""
        import base64

        key = "password_file" if self.kind == "basic" else "token_file"
        try:
            secret = self.secret_file.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"auth.{key}", f"cannot read {self.secret_file}: {exc}") from exc
        if not secret:
            raise ConfigError(f"auth.{key}", f"{self.secret_file} is empty")
        if self.kind == "basic":
            return "Basic " + base64.b64encode(f"{self.username}:{secret}".encode()).decode("ascii")
        return f"Bearer {secret}"


@dataclass(frozen=True, slots=True)
class Destination:
    """A place instances are forwarded to: a DICOM peer, a DICOMweb service or a folder."""

    name: str
    kind: str  # "dicom" | "folder" | "dicomweb"
    ae_title: str = ""
    host: str = ""
    port: int = 0
    transfer_syntaxes: tuple[str, ...] = ()  # preference ladder (UIDs); empty = ours first
    timeout_seconds: float = 30.0
    associations: int = 2  # parallel associations (dicom); each instance always uses the same one
    path: Path | None = None
    file_mode: int = 0o600  # folder: mode of the files written, whatever the umask
    directory_mode: int = 0o700  # folder: mode of the folders created
    tls: DestinationTls | None = None  # dicom: DICOM TLS to the peer
    storage_commitment: bool = False  # dicom: delivered only once the archive commits (PS3.4 Annex J)
    commitment_timeout_seconds: float = 60.0  # no N-EVENT-REPORT within this: a transient failure
    url: str = ""  # dicomweb: the service root; instances are POSTed to {url}/studies
    auth: HttpAuth | None = None  # dicomweb
    ca_certificates: Path | None = None  # dicomweb over https: the CAs to trust instead of the system's
    batch_instances: int = 50  # dicomweb: instances per multipart request


@dataclass(frozen=True, slots=True)
class DestinationTls:
    """A DICOM destination's ``tls = {...}`` table."""

    ca_certificates: Path  # the archive's certificate must chain to these
    certificate: Path | None = None  # ours, for archives that require a client certificate
    private_key: Path | None = None
    check_hostname: bool = True  # the archive's certificate must name the destination's host

    def context(self, key: str = "tls") -> ssl.SSLContext:
        return tls_context(server=False, certificate=self.certificate, private_key=self.private_key,
                           ca_certificates=self.ca_certificates, check_hostname=self.check_hostname, key=key)


@dataclass(frozen=True, slots=True)
class Route:
    """Instances matching every non-empty filter go to `destinations`."""

    destinations: tuple[str, ...]
    calling_ae: tuple[str, ...] = ()
    modality: tuple[str, ...] = ()
    sop_class: tuple[str, ...] = ()

    def matches(self, calling_ae: str, modality: str, sop_class: str) -> bool:
        return (
            (not self.calling_ae or calling_ae in self.calling_ae)
            and (not self.modality or modality in self.modality)
            and (not self.sop_class or sop_class in self.sop_class)
        )


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    """What happens to instances that need a decision."""

    malformed: str = "forward"  # damaged pixel data: "forward" as received, or "hold" as a dead letter


@dataclass(frozen=True, slots=True)
class Config:
    """The whole validated configuration."""

    server: ServerConfig
    spool: SpoolConfig
    compression: CompressionConfig
    retry: RetryConfig
    logging: LoggingConfig
    destinations: tuple[Destination, ...]
    forwarding: ForwardingConfig = ForwardingConfig()
    web: WebConfig | None = None
    routes: tuple[Route, ...] = ()
    source: Path | None = None
    policy: PolicyConfig = PolicyConfig()

    def destinations_for(self, calling_ae: str, modality: str, sop_class: str) -> list[Destination]:
        """Destinations an instance goes to, in configuration order."""
        if not self.routes:
            return list(self.destinations)
        names: set[str] = set()
        for route in self.routes:
            if route.matches(calling_ae, modality, sop_class):
                names.update(route.destinations)
        return [d for d in self.destinations if d.name in names]

    def destination(self, name: str) -> Destination | None:
        return next((d for d in self.destinations if d.name == name), None)


# --------------------------------------------------------------------------- #
# Validation helpers: each takes the full key path for its messages.


class _Table:
    """A TOML table whose keys are consumed one by one; leftovers are errors."""

    def __init__(self, key: str, value: Any) -> None:
        if not isinstance(value, dict):
            raise ConfigError(key, f"must be a table, got {type(value).__name__}")
        self.key = key
        self.values = dict(value)

    def path(self, name: str) -> str:
        return f"{self.key}.{name}" if self.key else name

    def pop(self, name: str, default: Any = None) -> Any:
        return self.values.pop(name, default)

    def finish(self) -> None:
        if self.values:
            unknown = sorted(self.values)[0]
            raise ConfigError(self.path(unknown), "unknown key")


def _str(key: str, value: Any, *, empty: bool = False) -> str:
    if not isinstance(value, str):
        raise ConfigError(key, f"must be a string, got {value!r}")
    if not empty and not value.strip():
        raise ConfigError(key, "must not be empty")
    return value


_HOST_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


def _host(key: str, value: Any) -> str:
    """An IP address or a host name (RFC 1123 labels); not looked up here: the network may come up later."""
    host = _str(key, value)
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        pass
    labels = host[:-1].split(".") if host.endswith(".") else host.split(".")
    # (a last label of digits alone is an IPv4 address gone wrong: no top-level domain is numeric)
    if len(host) > 253 or not all(_HOST_LABEL.fullmatch(label) for label in labels) or labels[-1].isdigit():
        raise ConfigError(key, f"must be an IP address or a host name, got {host!r}")
    return host


def _ae_title(key: str, value: Any) -> str:
    text = _str(key, value)
    problem = ae_title_problem(text)
    if problem:
        raise ConfigError(key, f"AE title {problem}")
    return text


def _int(key: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(key, f"must be an integer, got {value!r}")
    if not low <= value <= high:
        raise ConfigError(key, f"must be {low}..{high}, got {value}")
    return value


def _number(key: str, value: Any, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(key, f"must be a number, got {value!r}")
    if not low <= value <= high:
        raise ConfigError(key, f"must be {low:g}..{high:g}, got {value}")
    return float(value)


AUTO = "auto"
"""``[compression] processes = "auto"``: one worker process per core this process may run on."""


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the platform tells it), at most 64."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        count = os.cpu_count() or 1
    return max(1, min(64, count))


def _processes(key: str, value: Any) -> int:
    """Worker processes: 0..64, or "auto" for one per available core."""
    if value == AUTO:
        return available_cores()
    if isinstance(value, str):
        raise ConfigError(key, f"must be an integer 0..64 or \"auto\", got {value!r}")
    return _int(key, value, 0, 64)


def _bool(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(key, f"must be true or false, got {value!r}")
    return value


def _str_list(key: str, value: Any, item=_str) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ConfigError(key, f"must be a list of strings, got {value!r}")
    return tuple(item(f"{key}[{i}]", v) for i, v in enumerate(value))


def _path(key: str, value: Any, base: Path) -> Path:
    text = _str(key, value)
    if "\0" in text:
        raise ConfigError(key, f"must not contain a NUL character, got {text!r}")
    try:
        path = Path(text).expanduser()
    except RuntimeError as exc:  # ~user of no such user, or no home folder to expand ~ to
        raise ConfigError(key, f"cannot expand {text!r}: {exc}") from None
    return path if path.is_absolute() else (base / path)


def _syntax(key: str, value: Any, *, allow_keep: bool) -> str:
    """A transfer syntax given as UID, pydicom keyword or codec name -> UID."""
    text = _str(key, value)
    if text == KEEP:
        if not allow_keep:
            raise ConfigError(key, f"{KEEP!r} is not a transfer syntax")
        return KEEP
    from gateway.codecs import resolve_uid

    try:
        return resolve_uid(text)
    except CodecNotFoundError as exc:
        raise ConfigError(key, f"unknown transfer syntax {text!r} (UID, pydicom keyword or codec name)") from exc


def _target(key: str, value: Any) -> str:
    """A target syntax: must be one our registry can encode (or keep)."""
    uid = _syntax(key, value, allow_keep=True)
    if uid == KEEP:
        return uid
    from gateway.codecs import all_codecs

    encodable = {c.uid for c in all_codecs()} | NATIVE_SYNTAXES
    if uid not in encodable:
        names = ", ".join([c.keyword for c in all_codecs()] + [KEEP])
        raise ConfigError(key, f"no encoder for {value!r}; choose one of: {names}")
    return uid


def _sop_class(key: str, value: Any) -> str:
    text = _str(key, value)
    from pydicom import uid as _uid

    found = getattr(_uid, text, None)
    if isinstance(found, _uid.UID):
        return str(found)
    if is_valid_uid(text):
        return text
    raise ConfigError(key, f"not a SOP class UID or pydicom keyword: {text!r}")


# --------------------------------------------------------------------------- #


def _callers(key: str, value: Any) -> tuple[tuple[str, ...], tuple[CallerCertificate, ...],
                                            tuple[CallerAddresses, ...]]:
    """``allowed_callers``: AE titles, or ``{ ae_title, certificate_subject, addresses }`` tables (a table
    names a certificate subject, addresses, or both)."""
    import ipaddress

    if not isinstance(value, list):
        raise ConfigError(key, "must be a list of AE titles or { ae_title, certificate_subject, addresses } "
                          f"tables, got {value!r}")
    titles: list[str] = []
    bound: list[CallerCertificate] = []
    placed: list[CallerAddresses] = []
    for i, item in enumerate(value):
        if isinstance(item, dict):
            t = _Table(f"{key}[{i}]", item)
            raw_title, raw_subject, raw_addresses = t.pop("ae_title"), t.pop("certificate_subject"), t.pop("addresses")
            t.finish()  # a misspelt key first: it explains the missing one
            title = _ae_title(t.path("ae_title"), raw_title)
            if raw_subject is None and raw_addresses is None:
                raise ConfigError(t.path("certificate_subject"), "a table binds its AE title to a certificate_subject, "
                                  "to addresses, or to both; give one (a plain AE title needs no table)")
            if raw_subject is not None:
                subject = _str(t.path("certificate_subject"), raw_subject)
                try:
                    pairs = subject_pairs(subject)
                except ValueError as exc:
                    raise ConfigError(t.path("certificate_subject"), f"not a certificate subject: {exc}") from exc
                bound.append(CallerCertificate(title, pairs))
            if raw_addresses is not None:
                where = t.path("addresses")
                if not isinstance(raw_addresses, list) or not raw_addresses:
                    raise ConfigError(where, f"must be a non-empty list of addresses or networks (CIDR), "
                                      f"got {raw_addresses!r}")
                networks = []
                for j, entry in enumerate(raw_addresses):
                    text = _str(f"{where}[{j}]", entry)
                    try:
                        networks.append(str(ipaddress.ip_network(text.strip(), strict=False)))
                    except ValueError as exc:
                        raise ConfigError(f"{where}[{j}]", f"not an IP address or network: {exc}") from exc
                placed.append(CallerAddresses(title, tuple(networks)))
        else:
            title = _ae_title(f"{key}[{i}]", item)
        if title not in titles:
            titles.append(title)
    return tuple(titles), tuple(bound), tuple(placed)


def _server_tls(data: Any, base: Path) -> ServerTls | None:
    if data is None:
        return None
    t = _Table("server.tls", data)
    ca = t.pop("ca_certificates")
    cfg = ServerTls(
        certificate=_path(t.path("certificate"), t.pop("certificate"), base),
        private_key=_path(t.path("private_key"), t.pop("private_key"), base),
        ca_certificates=_path(t.path("ca_certificates"), ca, base) if ca is not None else None,
        require_client_certificate=_bool(t.path("require_client_certificate"),
                                         t.pop("require_client_certificate", True)),
    )
    t.finish()
    if cfg.require_client_certificate and cfg.ca_certificates is None:
        raise ConfigError("server.tls.ca_certificates", "required while require_client_certificate is true "
                          "(the callers' certificates are checked against it)")
    cfg.context()  # every file readable and usable: say so at start (and on reload), naming the key
    return cfg


def _server(data: Any, base: Path) -> ServerConfig:
    t = _Table("server", data if data is not None else {})
    titles, bound, placed = _callers(t.path("allowed_callers"), t.pop("allowed_callers", []))
    tls = _server_tls(t.pop("tls"), base)
    cfg = ServerConfig(
        ae_title=_ae_title(t.path("ae_title"), t.pop("ae_title", "GATEWAY")),
        host=_host(t.path("host"), t.pop("host", "127.0.0.1")),
        port=_int(t.path("port"), t.pop("port", 11112), 1, 65535),
        allowed_callers=titles,
        max_pdu=_int(t.path("max_pdu"), t.pop("max_pdu", 1_048_576), 4096, 64 * 1024 * 1024),
        max_associations=_int(t.path("max_associations"), t.pop("max_associations", 16), 1, 1000),
        association_request_seconds=_number(t.path("association_request_seconds"),
                                            t.pop("association_request_seconds", 10.0), 0.1, 600),
        idle_seconds=_number(t.path("idle_seconds"), t.pop("idle_seconds", 60.0), 0.5, 86400),
        max_connections=_int(t.path("max_connections"), t.pop("max_connections", 256), 1, 10_000),
        max_connections_per_address=_int(t.path("max_connections_per_address"),
                                         t.pop("max_connections_per_address", 32), 1, 10_000),
        tls=tls,
        caller_certificates=bound,
        caller_addresses=placed,
    )
    t.finish()
    if bound and tls is None:
        raise ConfigError("server.allowed_callers", "an entry with certificate_subject needs [server.tls]: "
                          "without TLS no caller presents a certificate")
    if bound and tls is not None and not tls.require_client_certificate and tls.ca_certificates is None:
        raise ConfigError("server.tls.ca_certificates", "required to check the certificates allowed_callers names")
    if cfg.max_associations > cfg.max_connections:
        raise ConfigError("server.max_connections",
                          f"must be at least max_associations ({cfg.max_associations}), got {cfg.max_connections}")
    return cfg


def _destination_tls(key: str, data: Any, base: Path) -> DestinationTls:
    t = _Table(key, data)
    cert, private = t.pop("certificate"), t.pop("private_key")
    cfg = DestinationTls(
        ca_certificates=_path(t.path("ca_certificates"), t.pop("ca_certificates"), base),
        certificate=_path(t.path("certificate"), cert, base) if cert is not None else None,
        private_key=_path(t.path("private_key"), private, base) if private is not None else None,
        check_hostname=_bool(t.path("check_hostname"), t.pop("check_hostname", True)),
    )
    t.finish()
    if (cfg.certificate is None) != (cfg.private_key is None):
        missing = "private_key" if cfg.private_key is None else "certificate"
        raise ConfigError(t.path(missing), "certificate and private_key go together")
    cfg.context(key)
    return cfg


def _spool(data: Any, base: Path) -> SpoolConfig:
    t = _Table("spool", data if data is not None else {})
    cfg = SpoolConfig(
        directory=_path(t.path("directory"), t.pop("directory", "spool"), base),
        keep_done_hours=_number(t.path("keep_done_hours"), t.pop("keep_done_hours", 168.0), 0, 24 * 3650),
        keep_record_days=_number(t.path("keep_record_days"), t.pop("keep_record_days", 3650.0), 1, 36500),
        min_free_bytes=_int(t.path("min_free_bytes"), t.pop("min_free_bytes", 256 << 20), 0, 1 << 50),
        keep_after_delivery=_bool(t.path("keep_after_delivery"), t.pop("keep_after_delivery", True)),
    )
    t.finish()
    return cfg


def _compression(data: Any) -> CompressionConfig:
    t = _Table("compression", data if data is not None else {})
    target = _target(t.path("transfer_syntax"), t.pop("transfer_syntax", KEEP))
    modality = _Table(t.path("modality"), t.pop("modality", {}))
    overrides = {}
    for name in list(modality.values):
        key = modality.path(name)
        if not name.isupper() or not name.isalnum() or len(name) > 16:
            raise ConfigError(key, f"modality must be an upper-case code such as 'CT', got {name!r}")
        overrides[name] = _target(key, modality.pop(name))
    verify = _bool(t.path("verify"), t.pop("verify", True))
    processes = _processes(t.path("processes"), t.pop("processes", AUTO))
    max_attempts = _int(t.path("max_attempts"), t.pop("max_attempts", 3), 1, 100)
    retry_seconds = _number(t.path("retry_seconds"), t.pop("retry_seconds", 5.0), 0.01, 3600)
    rescan_seconds = _number(t.path("rescan_seconds"), t.pop("rescan_seconds", 30.0), 0.1, 3600)
    timeout_seconds = _number(t.path("timeout_seconds"), t.pop("timeout_seconds", 600.0), 1, 86400)
    private_version = _private_version(t.path("private_version"), t.pop("private_version", PRIVATE_VERSION))
    t.finish()
    return CompressionConfig(transfer_syntax=target, modality=overrides, verify=verify, processes=processes,
                             max_attempts=max_attempts, retry_seconds=retry_seconds, rescan_seconds=rescan_seconds,
                             timeout_seconds=timeout_seconds, private_version=private_version)


def private_options(version: int = PRIVATE_VERSION) -> dict[str, dict[str, Any]]:
    """The encoder options that make the pipeline write `version` of our private syntax."""
    return {GATEWAY_LOSSLESS_V1: {"version": version}}


def private_version_problem(value: Any) -> str | None:
    """Why `value` is not a version of our private syntax that our encoder writes
    (``private.VERSIONS``); None when it is one."""
    from gateway.codecs.private import VERSIONS

    if isinstance(value, bool) or not isinstance(value, int) or value not in VERSIONS:
        return f"must be {' or '.join(str(v) for v in VERSIONS)}, got {value!r}"
    return None


def _private_version(key: str, value: Any) -> int:
    """A version of our private syntax that our encoder writes, else :class:`ConfigError` naming `key`."""
    problem = private_version_problem(value)
    if problem:
        raise ConfigError(key, problem)
    return value


def _retry(data: Any) -> RetryConfig:
    t = _Table("retry", data if data is not None else {})
    cfg = RetryConfig(
        max_attempts=_int(t.path("max_attempts"), t.pop("max_attempts", 50), 1, 1_000_000),
        base_seconds=_number(t.path("base_seconds"), t.pop("base_seconds", 2.0), 0.01, 86400),
        cap_seconds=_number(t.path("cap_seconds"), t.pop("cap_seconds", 300.0), 0.01, 7 * 86400),
        probe_seconds=_number(t.path("probe_seconds"), t.pop("probe_seconds", 5.0), 0.1, 3600),
    )
    if cfg.cap_seconds < cfg.base_seconds:
        raise ConfigError("retry.cap_seconds", f"must be >= base_seconds ({cfg.base_seconds:g}), got {cfg.cap_seconds:g}")
    t.finish()
    return cfg


def _loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _web(data: Any, base: Path) -> WebConfig | None:
    if data is None:
        return None
    t = _Table("web", data)
    token_file = t.pop("token_file")
    certificate, private_key = t.pop("certificate"), t.pop("private_key")
    cfg = WebConfig(
        host=_host(t.path("host"), t.pop("host", "127.0.0.1")),
        port=_int(t.path("port"), t.pop("port", 8080), 0, 65535),
        token_file=_path(t.path("token_file"), token_file, base) if token_file is not None else None,
        unready_after_seconds=_number(t.path("unready_after_seconds"), t.pop("unready_after_seconds", 300.0),
                                      1, 7 * 86400),
        certificate=_path(t.path("certificate"), certificate, base) if certificate is not None else None,
        private_key=_path(t.path("private_key"), private_key, base) if private_key is not None else None,
    )
    t.finish()
    if cfg.token_file is None and not _loopback(cfg.host):
        raise ConfigError("web.token_file", f"required when web.host is not a loopback address ({cfg.host!r})")
    if (cfg.certificate is None) != (cfg.private_key is None):
        missing, given = ("private_key", "certificate") if cfg.private_key is None else ("certificate", "private_key")
        raise ConfigError(f"web.{missing}", f"required with web.{given} (HTTPS needs both)")
    cfg.token()  # the file must exist and hold a token: say so at start, not at the first request
    cfg.context()  # the files must be readable PEM, the key the certificate's: said now, not by uvicorn
    return cfg


def _forwarding(data: Any) -> ForwardingConfig:
    t = _Table("forwarding", data if data is not None else {})
    cfg = ForwardingConfig(
        batch=_int(t.path("batch"), t.pop("batch", 32), 1, 10_000),
        idle_release_seconds=_number(t.path("idle_release_seconds"), t.pop("idle_release_seconds", 5.0), 0.1, 3600),
        rescan_seconds=_number(t.path("rescan_seconds"), t.pop("rescan_seconds", 30.0), 0.1, 3600),
    )
    t.finish()
    return cfg


MIN_LOG_BYTES = 64 * 1024  # a smaller log file would be rotated every few instances


def _logging(data: Any, base: Path) -> LoggingConfig:
    t = _Table("logging", data if data is not None else {})
    level = _str(t.path("level"), t.pop("level", "INFO")).upper()
    if level not in _LOG_LEVELS:
        raise ConfigError(t.path("level"), f"must be one of {', '.join(_LOG_LEVELS)}, got {level!r}")
    file = t.pop("file")
    max_bytes = _int(t.path("max_bytes"), t.pop("max_bytes", _LOGGING.max_bytes), 0, 1 << 40)
    if 0 < max_bytes < MIN_LOG_BYTES:
        raise ConfigError(t.path("max_bytes"), f"must be 0 (never rotate) or at least {MIN_LOG_BYTES}, got {max_bytes}")
    cfg = LoggingConfig(level=level, file=_path(t.path("file"), file, base) if file is not None else None,
                        max_bytes=max_bytes, backups=_int(t.path("backups"), t.pop("backups", _LOGGING.backups),
                                                          1, 1000))
    t.finish()
    if cfg.file is not None:
        if cfg.file.is_dir():
            raise ConfigError(t.path("file"), f"{cfg.file} is a folder; name the log file in it")
        problem = _unwritable(cfg.file)
        if problem:
            raise ConfigError(t.path("file"), problem)
    return cfg


def _unwritable(file: Path) -> str | None:
    """Why `file` cannot be appended to or created, with any missing folders; None if it can."""
    if file.exists():
        return None if os.access(file, os.W_OK) else f"{file} is not writable"
    folder = file.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        return f"cannot create {file}: {folder} is not a folder"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"cannot create {file}: {folder} is not writable"
    return None


def _destination(index: int, data: Any, base: Path) -> Destination:
    t = _Table(f"destinations[{index}]", data)
    name = _str(t.path("name"), t.pop("name"))
    if not all(c.isalnum() or c in "-_." for c in name):
        raise ConfigError(t.path("name"), f"use letters, digits, '-', '_' or '.', got {name!r}")
    kind = t.pop("kind")
    if kind == "dicom":
        dest = Destination(
            name=name,
            kind=kind,
            ae_title=_ae_title(t.path("ae_title"), t.pop("ae_title")),
            host=_host(t.path("host"), t.pop("host")),
            port=_int(t.path("port"), t.pop("port"), 1, 65535),
            transfer_syntaxes=tuple(
                _syntax(f"{t.path('transfer_syntaxes')}[{i}]", v, allow_keep=False)
                for i, v in enumerate(_list(t.path("transfer_syntaxes"), t.pop("transfer_syntaxes", [])))
            ),
            timeout_seconds=_number(t.path("timeout_seconds"), t.pop("timeout_seconds", 30.0), 0.1, 3600),
            associations=_int(t.path("associations"), t.pop("associations", 2), 1, 16),
            tls=_destination_tls(t.path("tls"), tls, base) if (tls := t.pop("tls")) is not None else None,
            storage_commitment=_bool(t.path("storage_commitment"), t.pop("storage_commitment", False)),
            commitment_timeout_seconds=_number(t.path("commitment_timeout_seconds"),
                                               t.pop("commitment_timeout_seconds", 60.0), 0.1, 86400),
        )
    elif kind == "folder":
        dest = Destination(name=name, kind=kind, path=_path(t.path("path"), t.pop("path"), base),
                           file_mode=_mode(t.path("file_mode"), t.pop("file_mode", "0600"), 0o600, 0o666),
                           directory_mode=_mode(t.path("directory_mode"), t.pop("directory_mode", "0700"),
                                                0o700, 0o777))
    elif kind == "dicomweb":
        dest = Destination(
            name=name,
            kind=kind,
            url=_url(t.path("url"), t.pop("url")),
            auth=_auth(t.path("auth"), t.pop("auth"), base),
            ca_certificates=(None if (ca := t.pop("ca_certificates")) is None
                             else _path(t.path("ca_certificates"), ca, base)),
            transfer_syntaxes=tuple(
                _syntax(f"{t.path('transfer_syntaxes')}[{i}]", v, allow_keep=False)
                for i, v in enumerate(_list(t.path("transfer_syntaxes"), t.pop("transfer_syntaxes", [])))
            ),
            timeout_seconds=_number(t.path("timeout_seconds"), t.pop("timeout_seconds", 30.0), 0.1, 3600),
            batch_instances=_int(t.path("batch_instances"), t.pop("batch_instances", 50), 1, 1000),
        )
        if dest.ca_certificates is not None and not dest.url.startswith("https://"):
            raise ConfigError(t.path("ca_certificates"), "only meaningful with an https:// url")
        if dest.ca_certificates is not None:
            try:  # as the forwarder will: a typo found now, not by dead-lettering every instance
                ssl.create_default_context(cafile=str(dest.ca_certificates))
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(t.path("ca_certificates"), f"cannot load {dest.ca_certificates}: {exc}") from exc
    else:
        raise ConfigError(t.path("kind"), f"must be 'dicomweb', 'dicom' or 'folder', got {kind!r}")
    t.finish()
    return dest


def _mode(key: str, value: Any, required: int, allowed: int) -> int:
    """A permission mode: a TOML octal integer (0o640) or a string of octal digits ("0640")."""
    if isinstance(value, str):
        try:
            mode = int(value, 8)
        except ValueError:
            raise ConfigError(key, f"not an octal mode: {value!r}") from None
    elif isinstance(value, int) and not isinstance(value, bool):
        mode = value
    else:
        raise ConfigError(key, f"expected an octal mode such as \"0640\", got {value!r}")
    if mode & ~allowed or mode & required != required:
        raise ConfigError(key, f"mode {mode:04o} must include {required:04o} and stay within {allowed:04o}")
    return mode


def _policy(data: Any) -> PolicyConfig:
    t = _Table("policy", data if data is not None else {})
    malformed = t.pop("malformed", "forward")
    if malformed not in ("forward", "hold"):
        raise ConfigError(t.path("malformed"), f"must be 'forward' or 'hold', got {malformed!r}")
    t.finish()
    return PolicyConfig(malformed=malformed)
def _url(key: str, value: Any) -> str:
    """An http(s) service root without credentials, query or fragment; no trailing slash."""
    from urllib.parse import urlsplit

    text = _str(key, value)
    try:
        parts = urlsplit(text)
        port = parts.port  # ValueError unless digits within 0..65535
    except ValueError as exc:
        raise ConfigError(key, f"not a valid URL ({exc}), got {text!r}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(key, f"must be an http:// or https:// URL, got {text!r}")
    if port == 0:
        raise ConfigError(key, f"the port must be 1..65535, got {text!r}")
    if parts.username or parts.password:
        raise ConfigError(key, "must not carry credentials; use auth with a password_file or token_file")
    if parts.query or parts.fragment:
        raise ConfigError(key, f"must be the service root, without query or fragment, got {text!r}")
    return text.rstrip("/")


def _auth(key: str, value: Any, base: Path) -> HttpAuth | None:
    if value is None:
        return None
    t = _Table(key, value)
    kind = t.pop("kind")
    if kind == "basic":
        auth = HttpAuth(kind=kind, username=_str(t.path("username"), t.pop("username")),
                        secret_file=_path(t.path("password_file"), t.pop("password_file"), base))
        if ":" in auth.username:
            raise ConfigError(t.path("username"), "must not contain ':'")
    elif kind == "bearer":
        auth = HttpAuth(kind=kind, secret_file=_path(t.path("token_file"), t.pop("token_file"), base))
    else:
        raise ConfigError(t.path("kind"), f"must be 'basic' or 'bearer', got {kind!r}")
    t.finish()
    return auth


def _list(key: str, value: Any) -> list:
    if not isinstance(value, list):
        raise ConfigError(key, f"must be a list, got {value!r}")
    return value


def _route(index: int, data: Any, names: set[str]) -> Route:
    t = _Table(f"routes[{index}]", data)
    dests = _str_list(t.path("destinations"), t.pop("destinations"))
    if not dests:
        raise ConfigError(t.path("destinations"), "must name at least one destination")
    for i, name in enumerate(dests):
        if name not in names:
            raise ConfigError(f"{t.path('destinations')}[{i}]", f"no destination named {name!r}")
    route = Route(
        destinations=dests,
        calling_ae=_str_list(t.path("calling_ae"), t.pop("calling_ae", []), _ae_title),
        modality=_str_list(t.path("modality"), t.pop("modality", [])),
        sop_class=_str_list(t.path("sop_class"), t.pop("sop_class", []), _sop_class),
    )
    t.finish()
    return route


def parse_config(data: dict[str, Any], base: Path, source: Path | None = None) -> Config:
    """Validate a parsed TOML document; relative paths resolve against `base`."""
    top = _Table("", data)
    server = _server(top.pop("server"), base)
    spool = _spool(top.pop("spool"), base)
    compression = _compression(top.pop("compression"))
    retry = _retry(top.pop("retry"))
    forwarding = _forwarding(top.pop("forwarding"))
    policy = _policy(top.pop("policy"))
    web = _web(top.pop("web"), base)
    logging = _logging(top.pop("logging"), base)
    raw_dests = top.pop("destinations")
    if raw_dests is None or not isinstance(raw_dests, list) or not raw_dests:
        raise ConfigError("destinations", "at least one [[destinations]] entry is required")
    destinations = tuple(_destination(i, d, base) for i, d in enumerate(raw_dests))
    seen: set[str] = set()
    for i, dest in enumerate(destinations):
        if dest.name in seen:
            raise ConfigError(f"destinations[{i}].name", f"duplicate destination name {dest.name!r}")
        seen.add(dest.name)
    raw_routes = top.pop("routes", [])
    routes = tuple(_route(i, r, seen) for i, r in enumerate(_list("routes", raw_routes)))
    top.finish()
    return Config(
        server=server,
        spool=spool,
        compression=compression,
        retry=retry,
        logging=logging,
        destinations=destinations,
        forwarding=forwarding,
        web=web,
        routes=routes,
        source=source,
        policy=policy,
    )


def load_config(path: str | Path) -> Config:
    """Read and validate the TOML file at `path`."""
    try:
        path = Path(path).resolve()
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError as exc:
        raise ConfigError("", f"configuration file {path} does not exist") from exc
    except IsADirectoryError as exc:
        raise ConfigError("", f"configuration file {path} is a folder, not a file") from exc
    except (OSError, RuntimeError) as exc:  # unreadable; RuntimeError: a loop of symbolic links
        raise ConfigError("", f"cannot read the configuration file {path}: "
                              f"{getattr(exc, 'strerror', None) or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("", f"{path.name} is not valid TOML: {exc}") from exc
    except UnicodeDecodeError as exc:
        line = exc.object.count(b"\n", 0, exc.start) + 1
        raise ConfigError("", f"{path.name} is not valid UTF-8 (TOML files are UTF-8): byte "
                              f"0x{exc.object[exc.start]:02x} on line {line}") from exc
    try:
        return parse_config(data, path.parent, source=path)
    except ConfigError:
        raise
    except (OSError, ValueError, RuntimeError) as exc:  # a check that did not name its key: name the file
        raise ConfigError("", f"{path.name}: {type(exc).__name__}: {exc}") from exc
