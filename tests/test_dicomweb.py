"""The DICOMweb (STOW-RS) destination: against Orthanc's DICOMweb plugin, and against a STOW-RS server of
this test that answers with failures, partial failures, 5xx, refusals of a syntax and silence."""

from __future__ import annotations

import base64
import json
import logging
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom import Dataset, dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGLSLossless, RLELossless

from gateway.config import ConfigError, parse_config
from gateway.dicom.identity import Identity
from gateway.errors import PermanentForwardError, TransientForwardError
from gateway.forward import make_sender
from gateway.forward.dicomweb import (
    DicomWebSender,
    classify_failure_reason,
    parse_store_response,
)
from gateway.spool import Job
from tests.conftest import build_config, make_series, send, wait_until
from tests.tools import issue, make_ca

# ------------------------------------------------------------------ a STOW-RS server of our own


class StowServer:
    """A STOW-RS origin server: keeps every request's instances; `answer` decides the response."""

    def __init__(self, answer: Callable[[list[Dataset]], tuple[int, dict | None]] | None = None,
                 *, tls: ssl.SSLContext | None = None, delay: float = 0.0,
                 headers: dict[str, str] | None = None) -> None:
        self.requests: list[list[Dataset]] = []
        self.part_types: list[list[str]] = []
        self.headers: list[dict[str, str]] = []
        self.answer = answer or (lambda datasets: (200, stored_response(datasets)))
        self.delay = delay
        self.extra_headers = headers or {}  # sent with every response
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                owner.headers.append(dict(self.headers.items()))
                message = BytesParser(policy=HTTP).parsebytes(
                    b"Content-Type: " + self.headers["Content-Type"].encode() + b"\r\n\r\n" + body)
                parts = list(message.iter_parts())
                datasets = [dcmread(BytesIO(part.get_payload(decode=True))) for part in parts]
                owner.part_types.append([(part.get_content_type(), part.get_param("transfer-syntax"))
                                         for part in parts])
                owner.requests.append(datasets)
                if owner.delay:
                    time.sleep(owner.delay)
                status, payload = owner.answer(datasets)
                data = b"" if payload is None else json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/dicom+json")
                    self.send_header("Content-Length", str(len(data)))
                    for name, value in owner.extra_headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass  # the client gave up (timeout test)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        scheme = "https" if tls is not None else "http"
        host = "localhost" if tls is not None else "127.0.0.1"
        self.url = f"{scheme}://{host}:{self.server.server_address[1]}/dicom-web"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _item(ds: Dataset, reason: int | None = None) -> dict:
    item = {"00081150": {"vr": "UI", "Value": [str(ds.SOPClassUID)]},
            "00081155": {"vr": "UI", "Value": [str(ds.SOPInstanceUID)]}}
    if reason is not None:
        item["00081197"] = {"vr": "US", "Value": [reason]}
    return item


def stored_response(stored: list[Dataset], failed: list[tuple[Dataset, int]] = ()) -> dict:
    out: dict = {}
    if stored:
        out["00081199"] = {"vr": "SQ", "Value": [_item(ds) for ds in stored]}
    if failed:
        out["00081198"] = {"vr": "SQ", "Value": [_item(ds, reason) for ds, reason in failed]}
    return out


@pytest.fixture
def stow() -> Iterator[Callable[..., StowServer]]:
    servers: list[StowServer] = []

    def start(*args: Any, **kwargs: Any) -> StowServer:
        server = StowServer(*args, **kwargs)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


# ------------------------------------------------------------------ objects as the spool keeps them


def _objects(tmp_path: Path, count: int, syntax: str = ExplicitVRLittleEndian,
             prefix: str = "id") -> tuple[list[Job], dict[str, Path], list[Dataset]]:
    """`count` processed objects (files with file meta, in `syntax`), their jobs, and the originals."""
    series = make_series(count, rows=64, columns=64)
    originals = [ds.copy() for ds in series]
    jobs, paths = [], {}
    for index, ds in enumerate(series):
        if syntax != ExplicitVRLittleEndian:
            ds.compress(syntax, encoding_plugin="gateway")
        path = tmp_path / f"{prefix}-{index}.dcm"
        ds.save_as(path, enforce_file_format=True)
        identity = Identity(str(ds.SOPClassUID), str(ds.SOPInstanceUID), str(ds.StudyInstanceUID),
                            str(ds.SeriesInstanceUID), "CT", syntax)
        job = Job(instance=f"{prefix}{index}", destination="web", identity=identity)
        jobs.append(job)
        paths[job.instance] = path
    return jobs, paths, originals


def _destination(tmp_path: Path, url: str, **extra: Any):
    config = build_config(tmp_path, [{"name": "web", "kind": "dicomweb", "url": url, "timeout_seconds": 5,
                                      **extra}])
    return config.destinations[0]


def _sender(dest, paths: dict[str, Path]) -> DicomWebSender:
    return DicomWebSender(dest, locate=lambda job: paths[job.instance])


def _outcomes(sender: DicomWebSender, jobs: list[Job], paths: dict[str, Path]) -> list[str | Exception]:
    """What the forwarder would see: prepare for the batch, then send each job in turn."""
    sender.prepare(jobs)
    out: list[str | Exception] = []
    for job in jobs:
        try:
            out.append(sender.send(job, paths[job.instance]))
        except (TransientForwardError, PermanentForwardError) as exc:
            out.append(exc)
    return out


# ------------------------------------------------------------------ configuration


def test_dicomweb_destination_config(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("secret\n")
    make_ca(tmp_path, "ca")
    dest = _destination(tmp_path, "https://pacs.example/dicom-web/", batch_instances=7,
                        auth={"kind": "basic", "username": "gw", "password_file": "pw"},
                        ca_certificates="ca.pem", transfer_syntaxes=["JPEGLSLossless", "ExplicitVRLittleEndian"])
    assert dest.url == "https://pacs.example/dicom-web"
    assert dest.batch_instances == 7 and dest.ca_certificates == tmp_path / "ca.pem"
    assert dest.transfer_syntaxes == (JPEGLSLossless, ExplicitVRLittleEndian)
    assert dest.auth is not None and dest.auth.header() == "Basic " + base64.b64encode(b"gw:secret").decode()


@pytest.mark.parametrize(("extra", "key"), [
    ({"url": "ftp://pacs/dicom-web"}, "destinations[0].url"),
    ({"url": "https://gw:pw@pacs/dicom-web"}, "destinations[0].url"),
    ({"url": "https://pacs/dicom-web?x=1"}, "destinations[0].url"),
    ({"batch_instances": 0}, "destinations[0].batch_instances"),
    ({"auth": {"kind": "digest"}}, "destinations[0].auth.kind"),
    ({"auth": {"kind": "bearer"}}, "destinations[0].auth.token_file"),
    ({"auth": {"kind": "bearer", "token_file": "t", "username": "x"}}, "destinations[0].auth.username"),
    ({"url": "http://pacs/dicom-web", "ca_certificates": "ca.pem"}, "destinations[0].ca_certificates"),
    ({"ca_certificates": "absent.pem"}, "destinations[0].ca_certificates"),
    ({"ae_title": "PACS"}, "destinations[0].ae_title"),
    ({"transfer_syntaxes": ["nonsense"]}, "destinations[0].transfer_syntaxes[0]"),
])
def test_dicomweb_config_errors_name_the_key(tmp_path: Path, extra: dict, key: str) -> None:
    entry = {"name": "web", "kind": "dicomweb", "url": "https://pacs/dicom-web", **extra}
    with pytest.raises(ConfigError) as caught:
        parse_config({"spool": {"directory": "s"}, "destinations": [entry]}, tmp_path)
    assert caught.value.key == key


def test_store_response_parsing() -> None:
    body = json.dumps({"00081199": {"vr": "SQ", "Value": [{"00081155": {"vr": "UI", "Value": ["1.2.3"]}}]},
                       "00081198": {"vr": "SQ", "Value": [{"00081155": {"vr": "UI", "Value": ["1.2.4"]},
                                                           "00081197": {"vr": "US", "Value": [0xA700]}}]}})
    got = parse_store_response("application/dicom+json", body.encode())
    assert got.stored == {"1.2.3"} and got.failed == {"1.2.4": 0xA700} and got.listed
    xml = (b'<?xml version="1.0"?><NativeDicomModel><DicomAttribute tag="00081198" vr="SQ"><Item number="1">'
           b'<DicomAttribute tag="00081155" vr="UI"><Value number="1">1.2.5</Value></DicomAttribute>'
           b'<DicomAttribute tag="00081197" vr="US"><Value number="1">49442</Value></DicomAttribute>'
           b'</Item></DicomAttribute></NativeDicomModel>')
    got = parse_store_response("application/dicom+xml", xml)
    assert got.failed == {"1.2.5": 0xC122} and not got.stored
    # As PS3.19 A.1 defines it: in the Native DICOM Model's namespace.
    native = xml.replace(b"<NativeDicomModel>",
                         b'<NativeDicomModel xmlns="http://dicom.nema.org/PS3.19/models/NativeDICOM">')
    native = native.replace(b"</NativeDicomModel>", b'<DicomAttribute tag="00081199" vr="SQ"><Item number="1">'
                            b'<DicomAttribute tag="00081155" vr="UI"><Value number="1">1.2.6</Value>'
                            b'</DicomAttribute></Item></DicomAttribute></NativeDicomModel>')
    got = parse_store_response("application/dicom+xml", native)
    assert got.failed == {"1.2.5": 0xC122} and got.stored == {"1.2.6"} and got.listed
    prefixed = native.replace(b'xmlns="', b'xmlns:d="').replace(b"<", b"<d:").replace(b"<d:/", b"</d:")
    got = parse_store_response("application/dicom+xml", prefixed.replace(b"<d:?xml", b"<?xml"))
    assert got.failed == {"1.2.5": 0xC122} and got.stored == {"1.2.6"} and got.listed
    for junk in (b"", b"{not json", b"<unclosed", b"[]", b"42"):
        assert not parse_store_response("application/dicom+json", junk).listed
    # A Failure Reason that is no US value is a processing failure, not an error of the forwarder.
    for reason in ("Infinity", "-Infinity", "NaN", "1e400", "70000", "-1", "2.5", '"A700"', "true", "null"):
        body = ('{"00081198": {"vr": "SQ", "Value": [{"00081155": {"vr": "UI", "Value": ["1.2.7"]}, '
                '"00081197": {"vr": "US", "Value": [%s]}}]}}' % reason).encode()
        assert parse_store_response("application/dicom+json", body).failed == {"1.2.7": 0x0110}, reason
    assert parse_store_response("application/dicom+json", body.replace(b"null", b"42752.0")).failed == {"1.2.7": 0xA700}
    for reason in (b"70000", "\u0661\u0662".encode(), b"-1"):
        assert parse_store_response("application/dicom+xml", xml.replace(b"49442", reason)).failed == {"1.2.5": 0x0110}
    # PS3.18 Table I.2-2
    assert [classify_failure_reason(r) for r in (0xA700, 0xA7FF, 0x0110, 0xC122, 0xA900, 0xC000, 0x0122, 0xFFFF)] \
        == ["transient", "transient", "transient", "syntax", "permanent", "permanent", "permanent", "permanent"]


# ------------------------------------------------------------------ against our STOW-RS server


def test_a_batch_goes_in_one_request_and_each_instance_gets_its_outcome(tmp_path: Path, stow) -> None:
    jobs, paths, _ = _objects(tmp_path, 5)

    def answer(datasets: list[Dataset]) -> tuple[int, dict]:  # 202: some stored, two failed
        return 202, stored_response([datasets[0], datasets[3], datasets[4]],
                                    [(datasets[1], 0xA700), (datasets[2], 0xC000)])

    server = stow(answer)
    sender = _sender(_destination(tmp_path, server.url, batch_instances=50), paths)
    out = _outcomes(sender, jobs, paths)
    assert len(server.requests) == 1 and len(server.requests[0]) == 5, "one multipart request for the batch"
    assert [type(o).__name__ if isinstance(o, Exception) else o for o in out] == [
        ExplicitVRLittleEndian, "TransientForwardError", "PermanentForwardError", ExplicitVRLittleEndian,
        ExplicitVRLittleEndian]
    assert "0xA700" in str(out[1]) and "0xC000" in str(out[2])
    sent = {str(ds.SOPInstanceUID): ds for ds in server.requests[0]}
    for job in jobs:  # each part is the whole file, bit for bit
        assert sent[job.identity.sop_instance_uid].PixelData == dcmread(paths[job.instance]).PixelData
    headers = server.headers[0]
    assert headers["Content-Type"].startswith('multipart/related; type="application/dicom"; boundary=')
    assert "Authorization" not in headers
    assert server.part_types[0] == [("application/dicom", None)] * 5
    sender.close()


def test_batch_instances_bounds_each_request(tmp_path: Path, stow) -> None:
    jobs, paths, _ = _objects(tmp_path, 5)
    server = stow()
    sender = _sender(_destination(tmp_path, server.url, batch_instances=2), paths)
    out = _outcomes(sender, jobs, paths)
    assert out == [ExplicitVRLittleEndian] * 5
    assert [len(r) for r in server.requests] == [2, 2, 1]
    sender.close()


@pytest.mark.parametrize(("status", "kind"), [(500, TransientForwardError), (503, TransientForwardError),
                                              (429, TransientForwardError), (401, TransientForwardError),
                                              (301, TransientForwardError), (308, TransientForwardError),
                                              (415, PermanentForwardError), (400, PermanentForwardError)])
def test_http_status_without_reasons_decides_for_a_single_instance(tmp_path: Path, stow, status: int,
                                                                   kind: type) -> None:
    jobs, paths, _ = _objects(tmp_path, 1)
    server = stow(lambda datasets: (status, None))
    out = _outcomes(_sender(_destination(tmp_path, server.url), paths), jobs, paths)
    assert isinstance(out[0], kind) and f"HTTP {status}" in str(out[0])


def test_a_redirect_is_not_followed_and_names_where_it_points(tmp_path: Path, stow) -> None:
    """Patient data is posted only to the configured URL; the log says where the archive says it moved."""
    jobs, paths, _ = _objects(tmp_path, 1)
    server = stow(lambda datasets: (308, None), headers={"Location": "https://elsewhere.example/dicom-web/studies"})
    out = _outcomes(_sender(_destination(tmp_path, server.url), paths), jobs, paths)
    assert isinstance(out[0], TransientForwardError)
    assert "a redirect to https://elsewhere.example/dicom-web/studies" in str(out[0])
    assert len(server.requests) == 1


def test_a_refused_batch_without_reasons_is_sent_again_one_by_one(tmp_path: Path, stow) -> None:
    jobs, paths, _ = _objects(tmp_path, 3)
    bad = jobs[1].identity.sop_instance_uid

    def answer(datasets: list[Dataset]) -> tuple[int, dict | None]:
        if any(str(ds.SOPInstanceUID) == bad for ds in datasets):
            return 400, None
        return 200, None  # 200 without a body: all stored

    server = stow(answer)
    out = _outcomes(_sender(_destination(tmp_path, server.url), paths), jobs, paths)
    assert [len(r) for r in server.requests] == [3, 1, 1, 1]
    assert out[0] == out[2] == ExplicitVRLittleEndian and isinstance(out[1], PermanentForwardError)


def test_transfer_syntax_refused_falls_back_verified(tmp_path: Path, stow) -> None:
    """C122 for JPEG-LS: the instance is re-encoded (verified) in the next syntax of the ladder and sent again."""
    jobs, paths, originals = _objects(tmp_path, 2, syntax=RLELossless)

    def answer(datasets: list[Dataset]) -> tuple[int, dict]:
        refused = [ds for ds in datasets if ds.file_meta.TransferSyntaxUID == JPEGLSLossless]
        return (409 if refused else 200), stored_response([ds for ds in datasets if ds not in refused],
                                                          [(ds, 0xC122) for ds in refused])

    server = stow(answer)
    dest = _destination(tmp_path, server.url, transfer_syntaxes=["JPEGLSLossless", "ExplicitVRLittleEndian"])
    sender = DicomWebSender(dest, locate=lambda job: paths[job.instance])
    out = _outcomes(sender, jobs, paths)
    assert out == [ExplicitVRLittleEndian] * 2
    assert [[str(ds.file_meta.TransferSyntaxUID) for ds in r] for r in server.requests] == [
        [JPEGLSLossless] * 2, [ExplicitVRLittleEndian] * 2]
    for ds, original in zip(server.requests[1], originals):
        assert np.array_equal(ds.pixel_array, original.pixel_array)
    # The refusal is remembered: the next batch goes straight to explicit VR little endian.
    more, more_paths, _ = _objects(tmp_path, 1, syntax=RLELossless, prefix="more")
    paths.update(more_paths)
    assert _outcomes(sender, more, paths) == [ExplicitVRLittleEndian]
    assert [str(ds.file_meta.TransferSyntaxUID) for ds in server.requests[-1]] == [ExplicitVRLittleEndian]


def _as_implicit(job: Job, path: Path) -> Job:
    """The object at `path` written again in implicit VR little endian (kept as received, say), and its job."""
    ds = dcmread(path)
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    ds.save_as(path, implicit_vr=True, little_endian=True, enforce_file_format=True)
    return replace(job, identity=job.identity.with_syntax(ImplicitVRLittleEndian))


@pytest.mark.parametrize("first", [JPEGLSLossless, ExplicitVRLittleEndian])
def test_an_implicit_vr_instance_is_re_encoded_with_its_batch(tmp_path: Path, stow, first: str) -> None:
    """Its raw implicit elements are written with their VRs, compressed or not."""
    jobs, paths, originals = _objects(tmp_path, 3)
    jobs[0] = _as_implicit(jobs[0], paths[jobs[0].instance])
    server = stow()
    dest = _destination(tmp_path, server.url, transfer_syntaxes=[first, "ExplicitVRLittleEndian"])
    out = _outcomes(_sender(dest, paths), jobs, paths)
    assert out[0] == first and len(server.requests) == 1
    got = {str(ds.SOPInstanceUID): ds for ds in server.requests[0]}[str(originals[0].SOPInstanceUID)]
    assert got.file_meta.TransferSyntaxUID == first
    assert got.PatientName == originals[0].PatientName and got.ImageType == originals[0].ImageType
    assert np.array_equal(got.pixel_array, originals[0].pixel_array)


def test_an_instance_that_cannot_be_written_fails_alone(tmp_path: Path, stow) -> None:
    """A transcoder whose output cannot be serialised: that instance is a dead letter saying why; the
    rest of its batch goes in the same request."""

    def relabelled(path: Path, stored: str, target: str) -> Dataset:  # raw implicit elements, labelled explicit
        ds = dcmread(path)
        ds.file_meta.TransferSyntaxUID = target
        ds.set_original_encoding(False, True, ds.original_character_set)
        return ds

    jobs, paths, _ = _objects(tmp_path, 3)
    jobs[1] = _as_implicit(jobs[1], paths[jobs[1].instance])
    server = stow()
    dest = _destination(tmp_path, server.url, transfer_syntaxes=["ExplicitVRLittleEndian"])
    out = _outcomes(DicomWebSender(dest, transcode=relabelled, locate=lambda job: paths[job.instance]), jobs, paths)
    assert out[0] == out[2] == ExplicitVRLittleEndian
    assert isinstance(out[1], PermanentForwardError)
    assert "Explicit VR Little Endian: TypeError" in str(out[1]) and "(0008,0008)" in str(out[1])
    assert [len(r) for r in server.requests] == [2]


def test_no_syntax_left_is_permanent(tmp_path: Path, stow) -> None:
    jobs, paths, _ = _objects(tmp_path, 1)
    server = stow(lambda datasets: (409, stored_response([], [(ds, 0xC122) for ds in datasets])))
    out = _outcomes(_sender(_destination(tmp_path, server.url, transfer_syntaxes=["ExplicitVRLittleEndian"]),
                            paths), jobs, paths)
    assert isinstance(out[0], PermanentForwardError) and "0xC122" in str(out[0])


def test_an_archive_that_does_not_answer_in_time_is_transient(tmp_path: Path, stow) -> None:
    jobs, paths, _ = _objects(tmp_path, 2)
    server = stow(delay=3.0)
    started = time.monotonic()
    out = _outcomes(_sender(_destination(tmp_path, server.url, timeout_seconds=0.5), paths), jobs, paths)
    assert time.monotonic() - started < 3.0
    assert all(isinstance(o, TransientForwardError) and "timed out" in str(o) for o in out)


def test_an_archive_that_is_not_there_is_transient(tmp_path: Path) -> None:
    from tests.conftest import free_port

    jobs, paths, _ = _objects(tmp_path, 1)
    out = _outcomes(_sender(_destination(tmp_path, f"http://127.0.0.1:{free_port()}/dicom-web"), paths), jobs, paths)
    assert isinstance(out[0], TransientForwardError)


def test_bearer_and_basic_credentials_are_sent_and_never_logged(tmp_path: Path, stow, caplog) -> None:
    (tmp_path / "token").write_text("tok-3141592653\n")
    (tmp_path / "pw").write_text("pw-2718281828\n")
    jobs, paths, _ = _objects(tmp_path, 1)
    server = stow(lambda datasets: (503, None))
    caplog.set_level(logging.DEBUG)
    for auth, expected in (({"kind": "bearer", "token_file": "token"}, "Bearer tok-3141592653"),
                           ({"kind": "basic", "username": "gw", "password_file": "pw"},
                            "Basic " + base64.b64encode(b"gw:pw-2718281828").decode())):
        out = _outcomes(_sender(_destination(tmp_path, server.url, auth=auth), paths), jobs, paths)
        assert isinstance(out[0], TransientForwardError)
        assert server.headers[-1]["Authorization"] == expected
        assert "3141592653" not in str(out[0]) and "2718281828" not in str(out[0])
    assert "3141592653" not in caplog.text and "2718281828" not in caplog.text
    (tmp_path / "token").write_text("")  # an emptied token file: transient, the key named
    out = _outcomes(_sender(_destination(tmp_path, server.url, auth={"kind": "bearer", "token_file": "token"}),
                            paths), jobs, paths)
    assert isinstance(out[0], TransientForwardError) and "auth.token_file" in str(out[0])


# ------------------------------------------------------------------ TLS with a CA of the destination's own


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("pki")
    for ca in ("ca", "other_ca"):
        make_ca(folder, ca)
    issue(folder, "server", "ca", common_name="localhost")
    return folder


def test_https_verified_against_the_configured_ca(tmp_path: Path, stow, pki: Path) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(pki / "server.pem"), str(pki / "server.key"))
    server = stow(tls=context)
    jobs, paths, _ = _objects(tmp_path, 2)
    good = _outcomes(_sender(_destination(tmp_path, server.url, ca_certificates=str(pki / "ca.pem")), paths),
                     jobs, paths)
    assert good == [ExplicitVRLittleEndian] * 2 and len(server.requests) == 1
    wrong = _outcomes(_sender(_destination(tmp_path, server.url, ca_certificates=str(pki / "other_ca.pem")),
                              paths), jobs, paths)
    assert all(isinstance(o, TransientForwardError) and "CERTIFICATE_VERIFY_FAILED" in str(o) for o in wrong)
    assert len(server.requests) == 1, "nothing is sent to a server the CA does not vouch for"
    # A CA file gone since the start (being replaced, say) delays delivery, and dead-letters nothing.
    copy = tmp_path / "ca-copy.pem"
    copy.write_bytes((pki / "ca.pem").read_bytes())
    sender = _sender(_destination(tmp_path, server.url, ca_certificates=str(copy)), paths)
    copy.unlink()
    gone = _outcomes(sender, jobs, paths)
    assert all(isinstance(o, TransientForwardError) and "cannot load ca_certificates" in str(o) for o in gone)
    copy.write_bytes((pki / "ca.pem").read_bytes())
    assert _outcomes(sender, jobs, paths) == [ExplicitVRLittleEndian] * 2


# ------------------------------------------------------------------ through the gateway


def test_dead_letters_and_retries_through_the_gateway(tmp_path: Path, stow, gateway_factory, capsys) -> None:
    """A 503 is retried and then delivered; an instance the archive cannot understand is a dead letter with
    its reason, shown by ``status``."""
    series = make_series(3, rows=32, columns=32)
    bad = str(series[2].SOPInstanceUID)
    calls: list[int] = []

    def answer(datasets: list[Dataset]) -> tuple[int, dict]:
        calls.append(len(datasets))
        if len(calls) == 1:
            return 503, None
        return 202, stored_response([ds for ds in datasets if str(ds.SOPInstanceUID) != bad],
                                    [(ds, 0xC000) for ds in datasets if str(ds.SOPInstanceUID) == bad])

    server = stow(answer)
    config = build_config(tmp_path, [{"name": "web", "kind": "dicomweb", "url": server.url}])
    gateway = gateway_factory(config)
    assert send(gateway.port, series) == [0, 0, 0]
    spool = gateway.spool
    assert wait_until(lambda: spool.count_jobs("done", "web") == 2 and spool.count_jobs("dead", "web") == 1,
                      timeout=60), spool.counts()
    dead = list(spool.jobs_in("dead", "web"))
    assert dead[0].identity.sop_instance_uid == bad and "0xC000" in (dead[0].reason or "")
    delivered = {str(ds.SOPInstanceUID): ds for r in server.requests[1:] for ds in r}
    for ds in series[:2]:
        got = delivered[str(ds.SOPInstanceUID)]
        assert got.file_meta.TransferSyntaxUID == RLELossless
        assert np.array_equal(got.pixel_array, ds.pixel_array)
    rows = {r["sop_instance_uid"]: r for ds in series for r in gateway.record.find(str(ds.SOPInstanceUID))}
    assert rows[bad]["deliveries"][-1]["outcome"] == "dead"
    assert rows[str(series[0].SOPInstanceUID)]["deliveries"][-1]["outcome"] == "delivered"


def _spooled(spool: Any, count: int) -> list[Job]:
    """`count` instances in the spool, each with a pending job for ``web``."""
    from pydicom.filewriter import dcmwrite

    jobs = []
    for ds in make_series(count, rows=32, columns=32):
        ident = spool.new_id()
        temp = spool.temp_path()
        dcmwrite(temp, ds, enforce_file_format=True)
        spool.store_object(ident, temp)
        job = Job(ident, "web", identity=Identity(str(ds.SOPClassUID), str(ds.SOPInstanceUID),
                                                   str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), "CT",
                                                   ExplicitVRLittleEndian), destinations=("web",))
        spool.add_job(job)
        jobs.append(job)
    return jobs


def test_stopping_during_a_request_keeps_what_the_archive_answered(tmp_path: Path, stow) -> None:
    """A stop (shutdown, or a reload retiring the forwarder) while a batch is being posted: the instances
    of that request get the archive's answer; only those not sent yet wait for the next forwarder."""
    from gateway.config import RetryConfig
    from gateway.forward import Forwarder
    from gateway.spool import DONE, PENDING, Spool

    server = stow(delay=1.0)  # an archive taking a second to answer
    spool = Spool(tmp_path / "spool")
    jobs = _spooled(spool, 5)
    dest = _destination(tmp_path, server.url, batch_instances=3)
    retry = RetryConfig(max_attempts=5, base_seconds=0.1, cap_seconds=0.2, probe_seconds=0.1)
    forwarder = Forwarder(dest, spool, retry, make_sender(dest, "GW", False, spool=spool))
    forwarder.start()
    assert wait_until(lambda: len(server.requests) == 1, timeout=10)
    forwarder.stop()
    forwarder.join(10)
    states = [spool.find_job(job.instance, "web").state for job in jobs]
    assert states == [DONE] * 3 + [PENDING] * 2
    again = Forwarder(dest, spool, retry, make_sender(dest, "GW", False, spool=spool))
    again.start()
    try:
        assert wait_until(lambda: all(spool.find_job(job.instance, "web").state == DONE for job in jobs),
                          timeout=20)
    finally:
        again.stop()
        again.join(10)
    assert [len(r) for r in server.requests] == [3, 2], "nothing the archive stored is sent again"


# ------------------------------------------------------------------ against Orthanc's DICOMweb plugin


def test_series_over_stow_rs_to_orthanc_bit_exact(tmp_path: Path, orthanc_web, gateway_factory) -> None:
    """A series reaches Orthanc over STOW-RS, in the destination's first syntax (re-encoded, verified, from
    the spool's RLE), every instance fetched back and compared pixel for pixel."""
    orthanc_web.clear()
    series = make_series(6, rows=96, columns=96, seed=3)
    url = f"http://127.0.0.1:{orthanc_web.http_port}/dicom-web"
    config = build_config(tmp_path, [{"name": "cloud", "kind": "dicomweb", "url": url, "batch_instances": 4,
                                      "transfer_syntaxes": ["JPEGLSLossless", "ExplicitVRLittleEndian"]}])
    gateway = gateway_factory(config)
    assert send(gateway.port, series) == [0] * 6
    assert wait_until(lambda: gateway.spool.count_jobs("done", "cloud") == 6, timeout=120), gateway.spool.counts()
    assert len(orthanc_web.instances()) == 6
    by_uid = {str(ds.SOPInstanceUID): ds for ds in series}
    for instance in orthanc_web.instances():
        got = dcmread(BytesIO(orthanc_web.file(instance)))
        assert got.file_meta.TransferSyntaxUID == JPEGLSLossless
        original = by_uid.pop(str(got.SOPInstanceUID))
        assert np.array_equal(got.pixel_array, original.pixel_array)
    assert not by_uid
    for ds in series:
        (row,) = gateway.record.find(str(ds.SOPInstanceUID))
        assert [(d["destination"], d["outcome"], d["syntax"]) for d in row["deliveries"]] == [
            ("cloud", "delivered", JPEGLSLossless)]


def test_make_sender_builds_the_dicomweb_sender(tmp_path: Path) -> None:
    dest = _destination(tmp_path, "https://pacs.example/dicom-web")
    assert isinstance(make_sender(dest, "GATEWAY", True), DicomWebSender)


@pytest.mark.parametrize("auth, field", [({"kind": "basic", "username": "gw", "password_file": "secret"},
                                          "password_file"),
                                         ({"kind": "bearer", "token_file": "secret"}, "token_file")])
def test_a_credentials_file_other_users_can_read_is_said_by_check_config(tmp_path: Path, auth: dict, field: str,
                                                                         caplog) -> None:
    """An archive's password or token open to every user of the machine is said, as a private key is."""
    import logging

    from gateway.cli import main

    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    toml = tmp_path / "gateway.toml"
    lines = [f'{k} = "{v}"' for k, v in auth.items()]
    toml.write_text('[spool]\ndirectory = "spool"\n[[destinations]]\nname = "web"\nkind = "dicomweb"\n'
                    'url = "https://pacs.example/dicom-web"\n[destinations.auth]\n' + "\n".join(lines) + "\n")
    wanted = f"destination web: auth.{field}: {secret} has mode 0644"
    for mode, said in ((0o644, True), (0o600, False)):
        secret.chmod(mode)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="gateway"):
            assert main(["check-config", str(toml)]) == 0
        assert any(r.getMessage().startswith(wanted) for r in caplog.records) == said, caplog.text
