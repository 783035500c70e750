"""The receiver's front door against a hostile peer: association requests pynetdicom cannot take, and
TLS refusals whose log line must point the operator the right way."""

from __future__ import annotations

import logging
import socket
import ssl
import time
import warnings
from pathlib import Path

import pytest

from gateway.net.scu import Association, encode_associate_rq
from tests.conftest import build_config, wait_until
from tests.test_tls import _server_tls, pki  # noqa: F401 - the session's test CA

VERIFICATION = "1.2.840.10008.1.1"
IMPLICIT = "1.2.840.10008.1.2"


def _request(calling: bytes = b"MODALITY", called: bytes = b"GATEWAY", context_id: int = 1) -> bytes:
    """An A-ASSOCIATE-RQ with raw AE title fields and the first presentation context's ID as given."""
    pdu = bytearray(encode_associate_rq("GATEWAY", "MODALITY", [(1, VERIFICATION, IMPLICIT)]))
    pdu[10:26] = called.ljust(16, b" ")[:16]
    pdu[26:42] = calling.ljust(16, b" ")[:16]
    first_context = pdu.index(bytes((0x20, 0)), 74)  # item type 20H, reserved
    pdu[first_context + 4] = context_id
    return bytes(pdu)


def _answer(port: int, pdu: bytes, timeout: float = 5.0, tls: ssl.SSLContext | None = None) -> tuple[int | None, float]:
    """The PDU type the gateway answers `pdu` with (None: closed, or nothing) and how long it took."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock = tls.wrap_socket(raw, server_hostname="localhost") if tls is not None else raw
    with sock:
        started = time.monotonic()
        sock.sendall(pdu)
        try:
            data = sock.recv(10)
        except (TimeoutError, OSError):
            data = b""
        return (data[0] if data else None), time.monotonic() - started


def _echo(port: int, tls: ssl.SSLContext | None = None) -> int:
    with Association.request("127.0.0.1", port, called_ae="GATEWAY", calling_ae="MODALITY",
                             contexts=[(VERIFICATION, IMPLICIT)], timeout=5, connect_timeout=5, tls=tls) as assoc:
        return assoc.c_echo().status


def _scp(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "gateway.scp"]


# ------------------------------------------------------- association requests pynetdicom cannot take

UNTAKEABLE = {
    "calling AE title not ASCII": (_request(calling=b"CT1\xe9"), 0x03),
    "calling AE title of spaces only": (_request(calling=b" " * 16), 0x03),
    "calling AE title with NULs": (_request(calling=b"CT1".ljust(16, b"\0")), 0x03),
    "called AE title not ASCII": (_request(called=b"GATEWAY\xe9"), 0x03),
    "even presentation context ID": (_request(context_id=2), 0x07),
}


@pytest.mark.parametrize("case", list(UNTAKEABLE))
def test_an_association_request_pynetdicom_cannot_take_holds_no_association_slot(tmp_path: Path, gateway_factory,
                                                                                  caplog, case: str) -> None:
    """pynetdicom failed on these after giving them an association: each held one of max_associations for
    its ACSE timeout (30 s) unanswered or aborted, so a few 70-byte requests every 30 s, before any
    allowed_callers check, kept every modality out.  They are answered at once and take nothing."""
    gateway = gateway_factory(build_config(tmp_path, server={"max_associations": 2, "allowed_callers": ["MODALITY"]}))
    pdu, answer = UNTAKEABLE[case]
    with caplog.at_level(logging.INFO, logger="gateway"):
        for _ in range(3):
            kind, seconds = _answer(gateway.port, pdu)
            assert kind == answer and seconds < 2, (kind, seconds)
        assert _echo(gateway.port) == 0
        assert wait_until(lambda: any("association request" in m and "127.0.0.1" in m for m in _scp(caplog)), 5)


def test_a_16_character_and_a_space_padded_calling_ae_title_are_taken(tmp_path: Path, gateway_factory) -> None:
    gateway = gateway_factory(build_config(tmp_path, server={"allowed_callers": ["ABCDEFGHIJKLMNOP", "CT1"]}))
    assert _answer(gateway.port, _request(calling=b"ABCDEFGHIJKLMNOP"))[0] == 0x02
    assert _answer(gateway.port, _request(calling=b"  CT1"))[0] == 0x02  # leading and trailing spaces: not significant
    assert _answer(gateway.port, _request(calling=b"ct1"))[0] == 0x03  # case is significant
    assert _answer(gateway.port, _request(calling=b"ABCDEFGHIJKLMNO"))[0] == 0x03


def test_a_bound_ae_title_cannot_be_spelt_around_its_certificate(pki: Path, tmp_path: Path,  # noqa: F811
                                                                 gateway_factory) -> None:
    callers = [{"ae_title": "CT1", "certificate_subject": "CN=gateway,O=dicom-gateway test"}]
    gateway = gateway_factory(build_config(tmp_path, server={"tls": _server_tls(pki), "allowed_callers": callers}))
    modality = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    modality.load_verify_locations(str(pki / "ca.pem"))
    modality.load_cert_chain(str(pki / "modality.pem"), str(pki / "modality.key"))
    for calling in (b"CT1", b" CT1", b"CT1\t", b"CT1".ljust(16, b"\0"), b"CT1\xe9"):
        kind, _ = _answer(gateway.port, _request(calling=calling), tls=modality)
        assert kind in (0x03, 0x07), calling


# ------------------------------------------------------- TLS refusals, in the operator's words


def _client(pki: Path, *, ca: str = "ca", version: ssl.TLSVersion | None = None,  # noqa: F811
            ciphers: str | None = None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(str(pki / f"{ca}.pem"))
    context.load_cert_chain(str(pki / "modality.pem"), str(pki / "modality.key"))
    with warnings.catch_warnings():  # the point is to offer what is deprecated
        warnings.simplefilter("ignore", DeprecationWarning)
        if version is not None:
            context.set_ciphers("ALL:@SECLEVEL=0")
            context.minimum_version = context.maximum_version = version
    if ciphers is not None:
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        context.set_ciphers(ciphers)
    return context


@pytest.mark.parametrize("case,expected", [
    ("TLS 1.1", "older than TLS 1.2"),
    ("TLS 1.0", "older than TLS 1.2"),
    ("CBC suites only", "no cipher suite in common"),
    ("the caller does not trust our CA", "the peer refused the gateway's certificate"),
])
def test_a_refused_handshake_is_logged_as_what_it_is(pki: Path, tmp_path: Path, gateway_factory,  # noqa: F811
                                                     caplog, case: str, expected: str) -> None:
    """A TLS 1.0 modality was said not to speak TLS at all, and a modality refusing the gateway's
    certificate read as the gateway refusing the modality's."""
    gateway = gateway_factory(build_config(tmp_path, server={"tls": _server_tls(pki)}))
    context = {
        "TLS 1.1": lambda: _client(pki, version=ssl.TLSVersion.TLSv1_1),
        "TLS 1.0": lambda: _client(pki, version=ssl.TLSVersion.TLSv1),
        "CBC suites only": lambda: _client(pki, ciphers="ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES128-SHA"),
        "the caller does not trust our CA": lambda: _client(pki, ca="other-ca"),
    }[case]()
    with caplog.at_level(logging.INFO, logger="gateway"):
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as raw:
            with pytest.raises((ssl.SSLError, OSError)):
                context.wrap_socket(raw, server_hostname="localhost")
        assert wait_until(lambda: any("TLS handshake with" in m for m in _scp(caplog)), timeout=5)
    line = next(m for m in _scp(caplog) if "TLS handshake with" in m)
    assert expected in line, line
    assert "does not speak TLS" not in line and "certificate refused" not in line
