"""The DICOMweb destination: STOW-RS (PS3.18 10.5) over HTTP(S), batched, streamed, per-instance outcomes.

Instances are POSTed to ``{url}/studies`` as ``multipart/related;
type="application/dicom"``, each part a whole DICOM file, up to
``batch_instances`` per request.  The body is streamed from the spool's files
(a large multi-frame object is never held in memory) with a Content-Length
computed in advance, since not every origin server takes chunked requests.
HTTP goes through httpx: connection reuse, timeouts, TLS verified against the
system's CAs or the destination's ``ca_certificates``.  Credentials are read
from their file for each request and never logged.

The first :meth:`DicomWebSender.send` of a batch sends the whole batch
:meth:`~DicomWebSender.prepare` announced; each later ``send`` returns that
instance's outcome, decided from the HTTP status and the Store Instances
Response (PS3.18 Annex I):

* listed in the Referenced SOP Sequence, or HTTP 200 without a Store
  Instances Response at all: delivered; left out of a response that lists
  others: a transient failure (Orthanc, for one, answers 200 with empty
  lists when it refused every part);
* in the Failed SOP Sequence: by its Failure Reason (Table I.2-2): ``A7xx``
  out of resources and ``0110`` processing failure are transient;
  ``C122`` transfer syntax not supported sends the instance again in the next
  syntax of its ladder (re-encoded and verified by the transcoder);
  ``A9xx``, ``Cxxx``, ``0122`` and any other are permanent;
* the whole request refused: 408, 429 and 5xx, a timeout or a broken
  connection, and 401/403/404 (credentials or URL to fix) are transient;
  400, 409, 413 and 415 without per-instance reasons send a batch again one
  instance at a time, and are permanent for a single instance.
"""

from __future__ import annotations

import json
import os
import ssl
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import httpx
from pydicom import Dataset
from pydicom.filewriter import dcmwrite

from gateway.config import ConfigError, Destination
from gateway.dicom.uids import EXPLICIT_VR_LITTLE_ENDIAN
from gateway.errors import ForwardError, PermanentForwardError, TransientForwardError
from gateway.forward.transcode import Ladder, Transcode, encode_for, stored_syntax
from gateway.logs import get_logger
from gateway.spool import Job

__all__ = ["DicomWebSender", "classify_failure_reason", "parse_store_response", "StoreResponse"]

_log = get_logger("forward")

_CHUNK = 1 << 20
_RESPONSE_LIMIT = 16 << 20  # bytes of a Store Instances Response read at most
TRANSFER_SYNTAX_NOT_SUPPORTED = 0xC122


def classify_failure_reason(reason: int) -> str:
    """``"transient"``, ``"syntax"`` (try another transfer syntax) or ``"permanent"`` (PS3.18 Table I.2-2)."""
    if 0xA700 <= reason <= 0xA7FF or reason == 0x0110:
        return "transient"
    if reason == TRANSFER_SYNTAX_NOT_SUPPORTED:
        return "syntax"
    return "permanent"


@dataclass(frozen=True, slots=True)
class StoreResponse:
    """The Store Instances Response: SOP Instance UIDs stored, and those failed with their Failure Reason."""

    stored: frozenset[str]
    failed: dict[str, int]
    listed: bool  # the response carried a Store Instances Response at all


def _json_items(ds: dict[str, Any], tag: str) -> list[dict[str, Any]]:
    value = ds.get(tag, {}).get("Value", []) if isinstance(ds.get(tag), dict) else []
    return [item for item in value if isinstance(item, dict)]


def _json_value(item: dict[str, Any], tag: str) -> Any:
    element = item.get(tag)
    if not isinstance(element, dict):
        return None
    values = element.get("Value") or [None]
    return values[0]


def _failure_reason(reason: Any) -> int:
    """A Failure Reason (US: 0..65535) as sent, or 0x0110 (processing failure) for anything else: a
    fraction, a value out of range, JSON's Infinity or NaN, a string, nothing."""
    if isinstance(reason, float) and reason.is_integer():
        reason = int(reason)
    if isinstance(reason, int) and not isinstance(reason, bool) and 0 <= reason <= 0xFFFF:
        return reason
    return 0x0110


def parse_store_response(content_type: str, body: bytes) -> StoreResponse:
    """Read a Store Instances Response in DICOM JSON (PS3.18 F.2) or the Native DICOM Model XML (PS3.19 A.1).

    An empty or unreadable body gives an empty, unlisted response (the HTTP
    status alone decides then).
    """
    stored: set[str] = set()
    failed: dict[str, int] = {}
    kind = content_type.split(";")[0].strip().lower()
    if not body.strip():
        return StoreResponse(frozenset(), {}, False)
    try:
        if kind.endswith("json"):
            data = json.loads(body)
            if isinstance(data, list):
                data = data[0] if data and isinstance(data[0], dict) else {}
            if not isinstance(data, dict):
                return StoreResponse(frozenset(), {}, False)
            for item in _json_items(data, "00081199"):
                uid = _json_value(item, "00081155")
                if isinstance(uid, str):
                    stored.add(uid)
            for item in _json_items(data, "00081198"):
                uid, reason = _json_value(item, "00081155"), _json_value(item, "00081197")
                if isinstance(uid, str):
                    failed[uid] = _failure_reason(reason)
            listed = "00081199" in data or "00081198" in data
        elif kind.endswith("xml"):
            import xml.etree.ElementTree as ET

            # PS3.19 A.1 puts the model in the namespace http://dicom.nema.org/PS3.19/models/NativeDICOM;
            # some servers leave it out: elements are matched by local name ({*}), in it or in none.
            root = ET.fromstring(body)

            def items(tag: str) -> list[ET.Element]:
                return [item for attr in root.findall(f"{{*}}DicomAttribute[@tag='{tag}']")
                        for item in attr.findall("{*}Item")]

            def value(item: ET.Element, tag: str) -> str | None:
                node = item.find(f"{{*}}DicomAttribute[@tag='{tag}']/{{*}}Value")
                return None if node is None or node.text is None else node.text.strip()

            for item in items("00081199"):
                if (uid := value(item, "00081155")):
                    stored.add(uid)
            for item in items("00081198"):
                if (uid := value(item, "00081155")):
                    reason = value(item, "00081197")
                    failed[uid] = _failure_reason(int(reason) if reason and reason.isascii() and reason.isdigit()
                                                  else None)
            listed = bool(root.findall("{*}DicomAttribute[@tag='00081199']") or
                          root.findall("{*}DicomAttribute[@tag='00081198']"))
        else:
            return StoreResponse(frozenset(), {}, False)
    except (ValueError, TypeError, SyntaxError) as exc:  # json and XML parse errors, odd values
        _log.warning("unreadable Store Instances Response (%s): %s", kind, exc)
        return StoreResponse(frozenset(), {}, False)
    return StoreResponse(frozenset(stored), failed, listed)


@dataclass(slots=True)
class _Part:
    job: Job
    syntax: str
    path: Path | None  # sent from the file as it is
    data: bytes | None  # or re-encoded


class DicomWebSender:
    """STOW-RS client of one DICOMweb destination (see the module docstring)."""

    def __init__(self, destination: Destination, *, transcode: Transcode | None = None,
                 locate: Callable[[Job], Path] | None = None, client: httpx.Client | None = None) -> None:
        self.destination = destination
        self._ladder = Ladder(transcode or (lambda path, stored, target: encode_for(path, stored, target)), _file_bytes)
        self._locate = locate
        self._client = client
        self._batch: list[Job] = []
        self._outcomes: dict[str, str | ForwardError] = {}
        self._refused: set[tuple[str, str]] = set()  # (SOP class, syntax) answered with C122

    @property
    def transcode(self) -> Transcode:
        """How an object is re-encoded for a syntax it is not stored in (see :mod:`gateway.forward.transcode`)."""
        return self._ladder.transcode

    # -- the Sender protocol

    def sent_bytes(self, job: Job) -> int | None:
        """The size of the file sent for `job` when it was re-encoded, else None (the stored object's)."""
        return self._ladder.sent_bytes(job)

    def prepare(self, jobs: list[Job]) -> None:
        self._batch = list(jobs)
        self._outcomes = {}
        self._ladder.forget()

    def has_outcome(self, job: Job) -> bool:
        return job.key in self._outcomes

    def send(self, job: Job, path: Path) -> str:
        if job.key not in self._outcomes:
            self._send_batch(job, path)
        outcome = self._outcomes.pop(job.key)
        if isinstance(outcome, ForwardError):
            raise outcome
        return outcome

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    # -- choosing what to send

    def ladder(self, sop_class: str, stored: str) -> list[str]:
        """Syntaxes to try for an object stored in `stored`, best first, without those refused.

        With ``transfer_syntaxes`` configured, only those (what the archive
        accepts); otherwise the stored syntax, then explicit VR little endian.
        """
        accepted = self.destination.transfer_syntaxes or (stored, EXPLICIT_VR_LITTLE_ENDIAN)
        out: list[str] = []
        for uid in accepted:
            if uid not in out and (sop_class, uid) not in self._refused:
                out.append(uid)
        return out

    def _part(self, job: Job, path: Path) -> _Part:
        _, stored = stored_syntax(path)
        ladder = self.ladder(job.identity.sop_class_uid, stored)
        syntax, data = self._ladder.choose(
            job, path, stored, ladder, f"{self.destination.name}: the instance (stored as {stored}) could not be "
            f"encoded in a syntax the archive takes ({', '.join(ladder) or 'none left'})")
        return _Part(job, syntax, path if data is None else None, data)

    # -- sending

    def _send_batch(self, first: Job, path: Path) -> None:
        wanted = [(first, path)]
        if self._locate is not None and any(job.key == first.key for job in self._batch):
            for job in self._batch:
                if job.key != first.key and job.key not in self._outcomes:
                    wanted.append((job, self._locate(job)))
        parts: list[_Part] = []
        seen: set[str] = set()
        for job, job_path in wanted:
            if len(parts) >= self.destination.batch_instances:
                break
            sop = job.identity.sop_instance_uid
            if sop in seen or (job is not first and not job_path.exists()):
                continue  # a second copy goes in a later request; a missing object is the forwarder's to report
            try:
                parts.append(self._part(job, job_path))
            except ForwardError as exc:
                self._outcomes[job.key] = exc
                continue
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as exc:  # noqa: BLE001 - one instance's trouble is not the rest of the batch's
                _log.exception("preparing %s for %s failed unexpectedly", job.sop, self.destination.name)
                self._outcomes[job.key] = TransientForwardError(f"{type(exc).__name__}: {exc}")
                continue
            seen.add(sop)
        groups = [parts] if parts else []
        while groups:
            groups = [again for group in groups for again in self._post(group)]
        self._batch = [job for job in self._batch if job.key not in self._outcomes]  # what is left to send

    def _post(self, parts: list[_Part]) -> list[list[_Part]]:
        """POST `parts`; record their outcomes; return requests to make again (another syntax, or one by one)."""
        dest = self.destination
        try:
            status, content_type, body, location = self._request(parts)
        except TransientForwardError as exc:
            for part in parts:
                self._outcomes[part.job.key] = exc
            return []
        response = parse_store_response(content_type, body)
        where = f"{dest.name} answered HTTP {status}"
        if 300 <= status < 400:
            where += f", a redirect to {location or 'nowhere named'}: set the destination's url if it moved"
        if not response.listed:
            if status == 200:
                for part in parts:
                    self._outcomes[part.job.key] = part.syntax
                return []
            if status in (400, 409, 413, 415) and len(parts) > 1:
                _log.info("%s to a STOW-RS request of %d instances without reasons; sending them one by one",
                          where, len(parts))
                return [[part] for part in parts]
            error = self._http_error(status, where)
            for part in parts:
                self._outcomes[part.job.key] = error
            return []
        again: list[_Part] = []
        for part in parts:
            sop = part.job.identity.sop_instance_uid
            if sop in response.failed:
                reason = response.failed[sop]
                kind = classify_failure_reason(reason)
                message = f"{where}, Failure Reason 0x{reason:04X} for instance {sop} in {part.syntax}"
                if kind == "syntax":
                    self._refused.add((part.job.identity.sop_class_uid, part.syntax))
                    retry = self._next_syntax(part, message)
                    if retry is not None:
                        again.append(retry)
                    continue
                self._outcomes[part.job.key] = (TransientForwardError(message) if kind == "transient"
                                                else PermanentForwardError(message))
            elif sop in response.stored:
                self._outcomes[part.job.key] = part.syntax
            else:  # Orthanc, for one, answers 200 with empty lists when it stored nothing
                self._outcomes[part.job.key] = TransientForwardError(f"{where} and left instance {sop} out "
                                                                     "of its Store Instances Response")
        return [again] if again else []

    def _next_syntax(self, part: _Part, message: str) -> _Part | None:
        path = self._locate(part.job) if self._locate is not None else part.path
        if path is None:
            self._outcomes[part.job.key] = PermanentForwardError(message)
            return None
        try:
            again = self._part(part.job, path)
        except ForwardError as exc:
            self._outcomes[part.job.key] = type(exc)(f"{message}; {exc}")
            return None
        _log.info("%s; sending it again in %s", message, again.syntax)
        return again

    @staticmethod
    def _http_error(status: int, where: str) -> ForwardError:
        # Credentials or a URL to fix (401, 403, 404, a redirect: the archive moved; instances are not posted
        # to wherever a redirect points), or a busy server: nothing is lost while it is put right.
        if status in (401, 403, 404, 408, 429) or 300 <= status < 400 or status >= 500:
            return TransientForwardError(where)
        return PermanentForwardError(where)

    def _client_for(self) -> httpx.Client:
        if self._client is None:
            dest = self.destination
            verify: ssl.SSLContext | bool = True
            if dest.ca_certificates is not None:
                try:
                    verify = ssl.create_default_context(cafile=str(dest.ca_certificates))
                except (OSError, ssl.SSLError) as exc:  # checked at start: replaced since, and fixed by a reload
                    raise TransientForwardError(f"{dest.name}: cannot load ca_certificates "
                                                f"{dest.ca_certificates}: {exc}") from exc
            self._client = httpx.Client(verify=verify, timeout=httpx.Timeout(dest.timeout_seconds),
                                        follow_redirects=False)
        return self._client

    def _request(self, parts: list[_Part]) -> tuple[int, str, bytes, str | None]:
        dest = self.destination
        boundary = uuid.uuid4().hex
        headers = {
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Accept": "application/dicom+json",
        }
        if dest.auth is not None:
            try:
                headers["Authorization"] = dest.auth.header()
            except ConfigError as exc:
                raise TransientForwardError(f"{dest.name}: {exc}") from exc
        try:
            length, body = _multipart(parts, boundary)
        except OSError as exc:
            raise TransientForwardError(f"cannot read a processed object for {dest.name}: {exc}") from exc
        headers["Content-Length"] = str(length)
        client = self._client_for()
        try:
            with client.stream("POST", f"{dest.url}/studies", content=body, headers=headers) as response:
                received = bytearray()
                deadline = time.monotonic() + dest.timeout_seconds  # a body trickling in is not waited for forever
                for chunk in response.iter_bytes():
                    received += chunk
                    if time.monotonic() > deadline:
                        raise httpx.ReadTimeout("the response body took longer than timeout_seconds")
                    if len(received) > _RESPONSE_LIMIT:  # no Store Instances Response is that long
                        _log.warning("%s sent a response of more than %d bytes; its body is ignored",
                                     dest.name, _RESPONSE_LIMIT)
                        received = bytearray()
                        break
                return (response.status_code, response.headers.get("content-type", ""), bytes(received),
                        response.headers.get("location"))
        except httpx.TimeoutException as exc:
            self.close()
            raise TransientForwardError(f"STOW-RS to {dest.name} timed out: {type(exc).__name__}") from exc
        except (httpx.HTTPError, OSError) as exc:  # connection refused or reset, TLS failure, ...
            self.close()
            raise TransientForwardError(f"STOW-RS to {dest.name} failed: {type(exc).__name__}: {exc}") from exc


def _file_bytes(ds: Dataset) -> bytes:
    buffer = BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def _multipart(parts: list[_Part], boundary: str) -> tuple[int, Iterator[bytes]]:
    """The body's length and a generator streaming it (files read in 1 MiB chunks)."""
    heads: list[bytes] = []
    sizes: list[int] = []
    for part in parts:
        # No transfer-syntax parameter: PS3.18 makes it optional, and Orthanc refuses a part that has one.
        heads.append(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode("ascii"))
        sizes.append(os.stat(part.path).st_size if part.path is not None else len(part.data or b""))
    tail = f"--{boundary}--\r\n".encode("ascii")
    total = sum(len(h) + s + 2 for h, s in zip(heads, sizes)) + len(tail)

    def stream() -> Iterator[bytes]:
        for head, part, size in zip(heads, parts, sizes):
            yield head
            if part.path is not None:
                with open(part.path, "rb") as handle:
                    left = size
                    while left > 0:
                        chunk = handle.read(min(_CHUNK, left))
                        if not chunk:
                            raise OSError(f"{part.path.name} shrank while being sent")
                        left -= len(chunk)
                        yield chunk
            else:
                yield part.data or b""
            yield b"\r\n"
        yield tail

    return total, stream()
