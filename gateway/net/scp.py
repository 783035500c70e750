"""Receive: a C-ECHO / C-STORE SCP that puts instances durably into the spool.

Success (0x0000) is answered only once the instance is fsync'd into the
spool (the fsyncs run while the dataset is checked, see :meth:`Spool.admit`).
If it cannot be stored, the answer is 0xA700 (out of resources) so the
sender retries, and so it is for a dataset more than the check takes
(:class:`TooLarge`: inflating past :data:`INFLATED_LIMIT`, or too many
elements or bytes for the pydicom check); a dataset that cannot be parsed,
whatever the reason, gets 0xC210 (cannot understand); a dataset whose SOP Class or SOP Instance UID is
not the one its C-STORE command names gets 0xA900 (data set does not match
SOP class), as DCMTK's storescp answers.  Either way the server keeps serving.

Datasets are received in chunks straight to a temporary file (pynetdicom's
``STORE_RECV_CHUNKED_DATASET``), moved into the spool before the handler
returns (pynetdicom deletes the temporary file afterwards), so a multi-frame
object of hundreds of MB is never held in memory several times.

Association policy: the called AE title must be ours, and when
``allowed_callers`` is set the calling AE title must be one of them (and,
for an entry bound to a certificate subject, the caller's verified TLS
certificate must carry that subject); otherwise the association is
rejected.  What a connection may take before and after it associates (TLS
handshake and association request deadline, PDU length, idle time, number
of connections) is bounded by :mod:`gateway.net.guard`.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import socket
import tempfile
import threading
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from pydicom import Dataset
from pydicom.filereader import read_dataset
from pynetdicom import AE, AllStoragePresentationContexts, _config, evt
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from gateway.config import ServerConfig
from gateway.dicom.filemeta import parse_file_meta
from gateway.dicom.identity import Identity
from gateway.dicom.uids import TRANSFER_SYNTAXES
from gateway.dicom.validate import is_valid_uid
from gateway.dicom.walk import TooManyElements, check_complete, walk_file
from gateway.errors import GatewayError, SpoolError
from gateway.logs import get_logger, stage
from gateway.net import sink
from gateway.net.guard import GuardedServer, Limits
from gateway.record import ProofRecord
from gateway.spool import Spool, create_private

__all__ = ["Receiver", "ACCEPTED_SYNTAXES", "accepted_syntaxes", "tcp_nodelay", "start_receiver"]

_log = get_logger("scp")

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_MISMATCH = 0xA900  # Data Set does not match SOP Class (PS3.4 B.2.3), also for another SOP Instance UID
STATUS_CANNOT_UNDERSTAND = 0xC210

# Standard syntaxes we accept: uncompressed, deflated, RLE, JPEG, JPEG-LS,
# JPEG 2000 and HTJ2K (lossless and lossy: a lossy image is kept as received).
ACCEPTED_SYNTAXES: tuple[str, ...] = (
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.5",  # RLE Lossless
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline
    "1.2.840.10008.1.2.4.51",  # JPEG Extended
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.4.201",  # HTJ2K Lossless
    "1.2.840.10008.1.2.4.202",  # HTJ2K Lossless RPCL
    "1.2.840.10008.1.2.4.203",  # HTJ2K
)

_STORAGE_COMMITMENT = "1.2.840.10008.1.20.1"  # Storage Commitment Push Model SOP Class

# The parse check leaves values above this size on disk (it only needs their lengths).
_DEFER = 256 * 1024
_INFLATE_CHUNK = 1 << 20
INFLATED_LIMIT = 512 << 20
"""Largest dataset a Deflated C-STORE may inflate to: it is inflated into a temporary file to be checked, and
a few megabytes of deflate stream can inflate to gigabytes.  (Deflated data sets are reports and other small
objects in practice.)"""
PARSE_READS_LIMIT = 200_000
"""Reads pydicom may make to check one data set the header walk leaves to it (Big Endian, Deflated, irregular
files).  pydicom reads each element's header, and each value it keeps, with a read of its own, and builds
objects of some 300 bytes per element: the count bounds its memory (some 60 MB) and time (two seconds), where
a data set of millions of empty elements (8 bytes each on the wire) would take gigabytes.  Real data sets
in these encodings have hundreds of elements; an enhanced multi-frame image, tens of thousands."""
PARSE_BYTES_LIMIT = 64 << 20
"""Bytes pydicom may read, and so keep in memory, to check one such data set.  Values larger than
:data:`_DEFER` are skipped, not read (large pixel data does not count), save inside sequences of undefined
length, which pydicom reads whole."""
_PARSING = threading.BoundedSemaphore(2)
"""pydicom checks running at once, whatever the number of associations: their memory is bounded together."""
_UID_CHARS = re.compile(r"[0-9.]{0,64}")


class Unparseable(ValueError):
    """A received dataset is not one complete DICOM dataset (answered 0xC210)."""


class TooLarge(Exception):
    """A received dataset is more than the receiver checks (answered 0xA700).

    A Deflated one inflating to more than :data:`INFLATED_LIMIT`, one whose
    pydicom check would take more than :data:`PARSE_READS_LIMIT` reads or
    :data:`PARSE_BYTES_LIMIT` bytes, or one of more elements than
    :data:`gateway.dicom.walk.MAX_ELEMENTS`.
    """


class Mismatch(ValueError):
    """A received dataset is not the instance its C-STORE command names (answered 0xA900)."""


def _inflate(handle: BinaryIO, offset: int, into: BinaryIO) -> int:
    """Inflate the Deflated dataset of the file `handle` from `offset` into `into`, in chunks; return its size.

    Raises ValueError unless the stream ends (its final block) where the
    file does, give or take the pad byte of an odd length.
    """
    handle.seek(offset)
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    size = 0
    while not inflater.eof:
        chunk = inflater.unconsumed_tail or handle.read(_INFLATE_CHUNK)
        out = inflater.decompress(chunk, _INFLATE_CHUNK)  # with no input left, what zlib still holds
        if not chunk and not out and not inflater.eof:
            raise ValueError("the deflate stream is truncated (no final block)")
        size += len(out)
        if size > INFLATED_LIMIT:
            raise TooLarge(f"the deflated dataset inflates to more than {INFLATED_LIMIT} bytes")
        into.write(out)
    rest = inflater.unused_data + handle.read(2)
    if rest not in (b"", b"\0"):  # PS3.5 A.5: a stream of odd length is padded with one 00 byte
        raise ValueError("bytes follow the end of the deflate stream")
    return size


class _BoundedReader:
    """A file as pydicom reads it, refused past :data:`PARSE_READS_LIMIT` reads or :data:`PARSE_BYTES_LIMIT` bytes.

    Past a limit every read raises :class:`TooLarge`; pydicom turns some
    exceptions into others, so :attr:`exceeded` says afterwards which it was.
    """

    def __init__(self, handle: BinaryIO) -> None:
        self._handle = handle
        self.reads = 0
        self.bytes = 0
        self.exceeded: str | None = None

    def read(self, size: int | None = -1) -> bytes:
        self.reads += 1
        if self.exceeded is None and self.reads > PARSE_READS_LIMIT:
            self.exceeded = (f"more than {PARSE_READS_LIMIT} elements and values to parse "
                             "(pydicom checks this encoding element by element)")
        if self.exceeded is not None:
            raise TooLarge(self.exceeded)
        over = PARSE_BYTES_LIMIT - self.bytes + 1  # a length running past the end of the file reads what there is
        data = self._handle.read(over if size is None or size < 0 else min(size, over))
        self.bytes += len(data)
        if self.bytes > PARSE_BYTES_LIMIT:
            self.exceeded = f"more than {PARSE_BYTES_LIMIT} bytes of values to read to parse it"
            raise TooLarge(self.exceeded)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._handle.seek(offset, whence)

    def tell(self) -> int:
        return self._handle.tell()


def _read_identity(handle: BinaryIO, offset: int, size: int, implicit: bool, little: bool, syntax: str) -> Identity:
    """The identity of the dataset from `offset` to `size` in `handle`, read by pydicom within the parse limits.

    Raises TooLarge past a limit; ValueError (or whatever pydicom raises) when
    it is not one complete dataset with valid SOP Class and Instance UIDs.
    """
    reader = _BoundedReader(handle)
    reader.seek(offset)
    with _PARSING:  # until the dataset is dropped
        try:
            ds = read_dataset(reader, implicit, little, defer_size=_DEFER)  # type: ignore[arg-type]
        except Exception:
            if reader.exceeded is None:
                raise
        if reader.exceeded is not None:  # raised here, not chained to what holds the elements read so far
            raise TooLarge(reader.exceeded)
        check_complete(ds, size)
        identity = Identity.of_dataset(ds, syntax)  # not pydicom's values: see there
        if not is_valid_uid(identity.sop_instance_uid) or not is_valid_uid(identity.sop_class_uid):
            raise ValueError("SOP Class or SOP Instance UID is not a valid UID")
        return identity


def _uid(value: object) -> str:
    return str(value or "").rstrip("\0 ")


def _shown(uid: str) -> str:
    """A UID as it may go into a log line: a peer's bytes could hold anything, line breaks included."""
    return uid if _UID_CHARS.fullmatch(uid) else repr(uid)[:80]


def accepted_syntaxes() -> list[str]:
    """Standard syntaxes plus the private ones of our codec registry."""
    from gateway.codecs import all_codecs

    extra = [c.uid for c in all_codecs() if c.uid not in ACCEPTED_SYNTAXES]
    return list(ACCEPTED_SYNTAXES) + extra


def tcp_nodelay(event: evt.Event) -> None:
    """EVT_CONN_OPEN handler: disable Nagle on the association's socket.

    DIMSE exchanges many small PDUs (responses, last fragments); with Nagle
    and delayed ACKs each can wait tens of milliseconds.
    """
    sock = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


class Receiver:
    """The C-STORE handler's state: the spool and who to tell about new work."""

    # (calling AE, event type, report) -> N-EVENT-REPORT-RSP status; set to take storage commitment reports.
    event_reports: Callable[[str, int, Dataset | None], int] | None = None

    def __init__(self, spool: Spool, on_received: Callable[[str], None] | None = None,
                 record: ProofRecord | None = None, min_free_bytes: int = 0) -> None:
        self.spool = spool
        self.on_received = on_received
        self.record = record
        self.min_free_bytes = min_free_bytes  # below this the spool takes nothing in (see gateway.net.sink)

    def _take(self, event: evt.Event) -> Path:
        """Move (or write) the received bytes into the spool's temp folder."""
        tmp = self.spool.temp_path()
        path = getattr(event, "dataset_path", None)  # None unless pynetdicom streamed it to a file
        source = Path(path) if path is not None else None
        if source is None:
            with create_private(tmp) as handle:
                handle.write(event.encoded_dataset())
            return tmp
        try:
            os.replace(source, tmp)
        except OSError:  # another filesystem: copy (the original is deleted by pynetdicom)
            shutil.copyfile(source, tmp)
        return tmp

    @staticmethod
    def _check(path: Path, syntax: str) -> Identity:
        """Check the received file is one complete DICOM dataset; raise if not.

        The header walk of :mod:`gateway.dicom.walk` decides for the common
        encodings; what it leaves or refuses, pydicom decides.
        """
        try:
            identity = walk_file(path)
        except TooManyElements as exc:  # whole, but the worker's pydicom would take too much memory
            raise TooLarge(str(exc)) from exc
        except ValueError:
            identity = None  # pydicom copes with some irregular files the walk refuses
        if identity is None:
            identity = Receiver._check_with_pydicom(path, syntax)
        return identity

    @staticmethod
    def _check_with_pydicom(path: Path, syntax: str) -> Identity:
        """Parse the received file with pydicom; raise if it is not a complete DICOM dataset.

        Within :data:`PARSE_READS_LIMIT` and :data:`PARSE_BYTES_LIMIT` (TooLarge
        past them).  A Deflated dataset is inflated into a temporary file first
        (pydicom would inflate it whole in memory).
        """
        with open(path, "rb") as handle:
            offset, encoding = parse_file_meta(handle.read(65_536))
            entry = TRANSFER_SYNTAXES.get(encoding)
            if entry is not None and entry.deflated:
                with tempfile.TemporaryFile(dir=path.parent) as inflated:
                    size = _inflate(handle, offset, inflated)
                    return _read_identity(inflated, 0, size, False, True, syntax)
            # an unknown syntax is read as pydicom reads it: explicit VR little endian
            return _read_identity(handle, offset, handle.seek(0, 2), entry is not None and entry.implicit_vr,
                                  entry is None or entry.little_endian, syntax)

    def handle_store(self, event: evt.Event) -> int:
        """Store one instance; return the DIMSE status for the sender."""
        calling = event.assoc.requestor.ae_title
        syntax = str(event.context.transfer_syntax)
        refused = sink.refusal(event.request)
        if refused is not None:
            request_uid = _shown(_uid(getattr(event.request, "AffectedSOPInstanceUID", None)))
            stage(_log, "rejected", request_uid, level=30, calling=calling, status="0xA700", reason=refused)
            return STATUS_OUT_OF_RESOURCES
        try:
            tmp = self._take(event)
            size = tmp.stat().st_size
        except OSError as exc:
            _log.error("receive failed: cannot write to the spool: %s", exc)
            return STATUS_OUT_OF_RESOURCES
        request_uid = _uid(getattr(event.request, "AffectedSOPInstanceUID", None))
        request_class = _uid(getattr(event.request, "AffectedSOPClassUID", None))

        def check(path: Path) -> Identity:
            try:
                identity = self._check(path, syntax)
            except (OSError, MemoryError, TooLarge):
                raise  # the spool or the machine, not the dataset
            except Exception as exc:  # pydicom, zlib, recursion...: all mean unparseable
                raise Unparseable(f"{type(exc).__name__}: {str(exc)[:200]}") from exc
            if identity.sop_instance_uid != request_uid:
                raise Mismatch(f"the dataset's SOP Instance UID {identity.sop_instance_uid} is not the "
                               f"command's {_shown(request_uid) or '(none)'}")
            if identity.sop_class_uid != request_class:
                raise Mismatch(f"the dataset's SOP Class UID {identity.sop_class_uid} is not the "
                               f"command's {_shown(request_class) or '(none)'}")
            return identity

        try:
            ident, identity = self.spool.admit(tmp, calling, check)
        except Unparseable as exc:
            stage(_log, "rejected", _shown(request_uid), calling=calling, status="0xC210",
                  reason=f"cannot parse dataset: {exc}")
            return STATUS_CANNOT_UNDERSTAND
        except Mismatch as exc:
            stage(_log, "rejected", _shown(request_uid), calling=calling, status="0xA900", reason=str(exc))
            return STATUS_MISMATCH
        except TooLarge as exc:
            tmp.unlink(missing_ok=True)
            stage(_log, "rejected", _shown(request_uid), calling=calling, status="0xA700", reason=str(exc))
            return STATUS_OUT_OF_RESOURCES
        except (SpoolError, OSError, MemoryError) as exc:
            tmp.unlink(missing_ok=True)
            stage(_log, "rejected", _shown(request_uid), calling=calling, status="0xA700", reason=f"spool: {exc}")
            return STATUS_OUT_OF_RESOURCES
        except Exception as exc:  # never pynetdicom's 0xC211 and traceback
            tmp.unlink(missing_ok=True)
            _log.error("receive failed: sop=%s: %s: %s", _shown(request_uid), type(exc).__name__, exc)
            return STATUS_OUT_OF_RESOURCES
        stage(_log, "received", identity.sop_instance_uid, study=identity.study_uid, calling=calling,
              modality=identity.modality, syntax=syntax, bytes=size, id=ident)
        if self.record is not None:
            requestor = event.assoc.requestor
            try:
                self.record.received(ident, identity, calling_ae=calling, called_ae=event.assoc.acceptor.ae_title,
                                     remote=f"{requestor.address}:{requestor.port}", size=size)
            except GatewayError as exc:  # the instance is safe: the worker's row stands in for this one
                _log.error("proof record: sop=%s id=%s: %s", identity.sop_instance_uid, ident, exc)
        if self.on_received is not None:
            try:
                self.on_received(ident)
            except GatewayError:
                pass  # the instance is durable; the worker finds it on its next scan
        return STATUS_SUCCESS


def _on_store(event: evt.Event, receiver: Receiver) -> int:
    try:
        return receiver.handle_store(event)
    finally:
        sink.finish(event.request)  # what the handler did not move into the spool


def _on_event_report(event: evt.Event, receiver: Receiver) -> tuple[int, None]:
    """An archive's storage commitment report on an association of its own (PS3.4 J.3.3)."""
    handler = getattr(receiver, "event_reports", None)
    if handler is None or event.context.abstract_syntax != _STORAGE_COMMITMENT:
        return 0x0110, None  # processing failure: no commitment was asked for here
    return handler(event.assoc.requestor.ae_title, event.event_type, event.event_information), None


def _on_echo(event: evt.Event) -> int:
    return STATUS_SUCCESS


def _on_rejected(event: evt.Event) -> None:
    """One line per calling AE title and address every 10 s: a modality refused retries, for as long as no one
    fixes its configuration."""
    requestor = event.assoc.requestor
    message = f"association rejected: calling={requestor.ae_title} from {requestor.address}"
    throttle = getattr(getattr(event.assoc, "_server", None), "throttle", None)  # the receiver's (GuardedServer)
    if throttle is None:
        _log.warning("%s", message)
        return
    throttle.log(30, f"rejected {requestor.ae_title}", str(requestor.address), message)


class _SupportedContext(PresentationContext):
    """A supported presentation context that is cheap to deep-copy.

    pynetdicom deep-copies the server's supported contexts for every new
    association.  Ours are about 170 SOP classes times 19 transfer syntaxes,
    and the generic deep copy re-validates every UID: 40 ms of CPU per
    association, more than receiving a CT image.  Only the transfer syntax
    list is mutable here (UIDs are immutable strings), so a shallow copy
    with a fresh list is an exact copy.
    """

    def __deepcopy__(self, memo: dict) -> _SupportedContext:
        new = copy.copy(self)
        new._transfer_syntax = list(self._transfer_syntax)
        return new


def _cheap_copies(contexts: list[PresentationContext]) -> list[PresentationContext]:
    out: list[PresentationContext] = []
    for context in contexts:
        cheap = _SupportedContext()
        cheap.__dict__.update(copy.deepcopy(context).__dict__)
        out.append(cheap)
    return out


def build_ae(server: ServerConfig) -> AE:
    """An AE accepting verification and every storage SOP class."""
    ae = AE(ae_title=server.ae_title)
    ae.maximum_pdu_size = server.max_pdu
    ae.require_called_aet = True
    if server.allowed_callers:
        ae.require_calling_aet = list(server.allowed_callers)
    ae.maximum_associations = server.max_associations
    ae.network_timeout = server.idle_seconds  # an established association silent this long is aborted
    ae.dimse_timeout = server.idle_seconds
    syntaxes = accepted_syntaxes()
    ae.add_supported_context(Verification, syntaxes[:3])
    # Storage commitment reports: the archive, as association requestor, acts as SCP (role selection).
    ae.add_supported_context(_STORAGE_COMMITMENT, syntaxes[:2], scu_role=False, scp_role=True)
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax, syntaxes)
    return ae


def start_receiver(server: ServerConfig, receiver: Receiver) -> GuardedServer:
    """Start listening in background threads; stop with ``.shutdown()``.

    Connections go through :class:`~gateway.net.guard.GuardedServer` (TLS
    when ``[server.tls]`` is set, deadlines, PDU and connection limits)
    before pynetdicom's association handling sees them.

    Two of pynetdicom's module-wide settings are changed, because pynetdicom
    offers them per process only:

    * ``STORE_RECV_CHUNKED_DATASET``: a received dataset is streamed to a
      file instead of being held in memory, which bounds the receiver's memory
      whatever the instance's size.  Any other C-STORE SCP in the same
      process receives that way too; pynetdicom's ``event.dataset`` still
      works for it (it reads the file), so such code keeps working.
    * ``LOG_HANDLER_LEVEL = "none"``: pynetdicom's default handlers describe
      every PDU and DIMSE message for its logger, which the gateway keeps at
      WARNING; building those descriptions costs CPU on every message.

    And pydicom's warning about a UID it finds malformed is ignored: pydicom
    checks each UID it converts, those of every C-STORE request included,
    and the receiver's own check (:func:`~gateway.dicom.validate.is_valid_uid`)
    refuses such an instance and logs why, which the warning would only
    repeat.  The service's logging (:func:`~gateway.logs.setup_logging`)
    shows warnings without keeping their texts, but a receiver started in a
    process that has not set it up (a gateway run in-process) would, under
    Python's own action, keep each distinct text in pydicom's warning
    registry for good, a UID a new one each time (a modality writing leading
    zeros: one entry more per instance).
    """
    _config.STORE_RECV_CHUNKED_DATASET = True
    _config.LOG_HANDLER_LEVEL = "none"
    warnings.filterwarnings("ignore", message="Invalid value for VR UI", category=UserWarning)
    ae = build_ae(server)
    sink.bind(ae, receiver.spool.tmp, receiver.min_free_bytes, receiver.spool.make_room)
    handlers = [
        (evt.EVT_CONN_OPEN, tcp_nodelay),
        (evt.EVT_C_ECHO, _on_echo),
        (evt.EVT_C_STORE, _on_store, [receiver]),
        (evt.EVT_REJECTED, _on_rejected),
        (evt.EVT_N_EVENT_REPORT, _on_event_report, [receiver]),
    ]
    try:
        listener = GuardedServer(ae, (server.host, server.port), server.ae_title, _cheap_copies(ae.supported_contexts),
                                 limits=Limits.of(server), tls=server.tls.context() if server.tls else None,
                                 caller_certificates=server.caller_certificates,
                                 caller_addresses=server.caller_addresses, evt_handlers=handlers)
    except OSError as exc:
        raise GatewayError(f"cannot listen on {server.host}:{server.port}: {exc}") from exc
    ae._servers.append(listener)  # as AE.start_server does: AE.shutdown() and the server's shutdown() expect it
    listener.accept_thread = threading.Thread(target=listener.serve_forever, name="dicom-accept", daemon=True)
    listener.accept_thread.start()
    return listener
