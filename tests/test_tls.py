"""DICOM TLS (PS3.15 B.12, BCP 195) on the receiver and towards destinations, with real peers.

Certificates are made at test time by ``config/make-test-ca.sh`` (openssl):
a CA, the gateway, an archive, a modality, and the ones that must be
refused (an impostor signed by another CA, an expired one).
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import ssl
import subprocess
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from pydicom import dcmread

from gateway.cli import main as cli_main
from gateway.config import load_config, subject_pairs
from gateway.errors import ConfigError
from tests.conftest import (
    REPO,
    Orthanc,
    build_config,
    free_port,
    listening,
    pydicom_file,
    start_serve,
    stop_process,
    wait_until,
)
from tests.tools import program, require_dcmtk

CT_SMALL = "CT_small.dcm"
SUBJECT = "dicom-gateway test"


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("openssl") is None or shutil.which("sh") is None:
        pytest.skip("openssl is not installed (Debian package 'openssl')")
    folder = tmp_path_factory.mktemp("pki")
    subprocess.run(["sh", str(REPO / "config" / "make-test-ca.sh"), str(folder), "--with-bad"], check=True,
                   capture_output=True, timeout=120)
    return folder


def _server_tls(pki: Path, **extra: object) -> dict:
    return {"certificate": str(pki / "gateway.pem"), "private_key": str(pki / "gateway.key"),
            "ca_certificates": str(pki / "ca.pem"), **extra}


def _sample(tmp_path: Path) -> Path:
    path = tmp_path / "ct.dcm"
    pydicom_file(CT_SMALL).save_as(path, enforce_file_format=True)
    return path


def _storescu(pki: Path, port: int, path: Path, *, cert: str | None = "modality", calling: str = "MODALITY",
              tls: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    args = [require_dcmtk("storescu"), "-aet", calling, "-aec", "GATEWAY", "-to", "10", "-ta", "10"]
    if tls and cert is not None:
        args += ["+tls", str(pki / f"{cert}.key"), str(pki / f"{cert}.pem"), "+cf", str(pki / "ca.pem")]
    elif tls:
        args += ["+tla", "+cf", str(pki / "ca.pem")]
    args += ["127.0.0.1", str(port), str(path)]
    return subprocess.run(args, capture_output=True, timeout=timeout, env=dict(os.environ, TCP_NODELAY="1"))


def _archived(root: Path) -> list[Path]:
    folder = root / "archive"
    return [p for p in folder.rglob("*.dcm")] if folder.exists() else []


def _scp_messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "gateway.scp"]


# ------------------------------------------------------------------ receiver


@pytest.mark.interop
def test_dcmtk_storescu_over_tls_is_received(pki: Path, tmp_path: Path, gateway_factory) -> None:
    gateway = gateway_factory(build_config(tmp_path, server={"tls": _server_tls(pki)},
                                           compression={"transfer_syntax": "keep"}))
    done = _storescu(pki, gateway.port, _sample(tmp_path))
    assert done.returncode == 0, done.stderr.decode()
    assert wait_until(lambda: len(_archived(tmp_path)) == 1, timeout=20)
    assert dcmread(_archived(tmp_path)[0]).SOPInstanceUID == pydicom_file(CT_SMALL).SOPInstanceUID


@pytest.mark.interop
@pytest.mark.parametrize("case,expected", [
    ("plain TCP to the TLS port", "does not speak TLS"),
    ("certificate from another CA", "not signed by a CA of ca_certificates"),
    ("expired certificate", "certificate has expired"),
    ("no certificate", "sent no certificate"),
])
def test_refused_peers_get_a_clear_log_line(pki: Path, tmp_path: Path, gateway_factory, caplog,
                                            case: str, expected: str) -> None:
    gateway = gateway_factory(build_config(tmp_path, server={"tls": _server_tls(pki)}))
    cert = {"certificate from another CA": "impostor", "expired certificate": "expired",
            "no certificate": None}.get(case, "modality")
    with caplog.at_level(logging.INFO, logger="gateway"):
        started = time.monotonic()
        done = _storescu(pki, gateway.port, _sample(tmp_path), cert=cert, tls=case != "plain TCP to the TLS port")
        assert done.returncode != 0
        assert time.monotonic() - started < 10
        assert wait_until(lambda: any(expected in m for m in _scp_messages(caplog)), timeout=5), _scp_messages(caplog)
    line = next(m for m in _scp_messages(caplog) if expected in m)
    assert line.startswith("TLS handshake with 127.0.0.1:") and "connection closed" in line
    assert not _archived(tmp_path)


def test_handshake_is_off_the_accept_path(pki: Path, tmp_path: Path, gateway_factory) -> None:
    """Silent TCP connections on the TLS port do not delay a real TLS association."""
    gateway = gateway_factory(build_config(tmp_path, server={"tls": _server_tls(pki)}))
    idle = [socket.create_connection(("127.0.0.1", gateway.port)) for _ in range(5)]
    try:
        context = ssl.create_default_context(cafile=str(pki / "ca.pem"))
        context.load_cert_chain(str(pki / "modality.pem"), str(pki / "modality.key"))
        from gateway.net.scu import Association

        started = time.monotonic()
        with Association.request("127.0.0.1", gateway.port, called_ae="GATEWAY", calling_ae="MODALITY",
                                 contexts=[("1.2.840.10008.1.1", "1.2.840.10008.1.2")], timeout=5,
                                 connect_timeout=5, tls=context) as assoc:
            assert assoc.c_echo().status == 0
        assert time.monotonic() - started < 2
    finally:
        for sock in idle:
            sock.close()


@pytest.mark.interop
def test_dcmtk_tls_association_is_not_delayed_by_an_idle_connection(pki: Path, tmp_path: Path,
                                                                     gateway_factory) -> None:
    gateway = gateway_factory(build_config(tmp_path, server={"tls": _server_tls(pki)}))
    with socket.create_connection(("127.0.0.1", gateway.port)):
        started = time.monotonic()
        done = _storescu(pki, gateway.port, _sample(tmp_path))
        assert done.returncode == 0, done.stderr.decode()
        assert time.monotonic() - started < 5


def test_silent_tls_handshake_is_closed_at_the_deadline(pki: Path, tmp_path: Path, gateway_factory, caplog) -> None:
    gateway = gateway_factory(build_config(tmp_path, server={"tls": _server_tls(pki),
                                                             "association_request_seconds": 1}))
    with caplog.at_level(logging.INFO, logger="gateway"), \
            socket.create_connection(("127.0.0.1", gateway.port)) as sock:
        sock.settimeout(5)
        started = time.monotonic()
        try:
            assert sock.recv(1) == b""
        except ConnectionResetError:
            pass
        assert 0.9 <= time.monotonic() - started < 3
    assert any("no complete TLS handshake within 1 s" in m for m in _scp_messages(caplog))


@pytest.mark.parametrize("version,accepted", [(ssl.TLSVersion.TLSv1_1, False), (ssl.TLSVersion.TLSv1_2, True),
                                              (ssl.TLSVersion.TLSv1_3, True)])
def test_versions_and_ciphers_follow_bcp195(pki: Path, tmp_path: Path, gateway_factory,
                                            version: ssl.TLSVersion, accepted: bool) -> None:
    gateway = gateway_factory(build_config(tmp_path, server={"tls": _server_tls(pki)}))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(str(pki / "ca.pem"))
    context.load_cert_chain(str(pki / "modality.pem"), str(pki / "modality.key"))
    with warnings.catch_warnings():  # the point is to offer what is deprecated
        warnings.simplefilter("ignore", DeprecationWarning)
        if version == ssl.TLSVersion.TLSv1_1:
            context.set_ciphers("ALL:@SECLEVEL=0")
        context.minimum_version = context.maximum_version = version
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as raw:
        if not accepted:
            with pytest.raises((ssl.SSLError, OSError)):
                context.wrap_socket(raw, server_hostname="127.0.0.1")
            return
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            name, protocol, _ = tls.cipher()
            assert protocol == version.name.replace("TLSv1_", "TLSv1.")
            assert "GCM" in name or "CHACHA20" in name  # AEAD only


def test_tls_12_client_offering_only_cbc_is_refused(pki: Path, tmp_path: Path, gateway_factory) -> None:
    gateway = gateway_factory(build_config(tmp_path, server={"tls": _server_tls(pki)}))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(str(pki / "ca.pem"))
    context.load_cert_chain(str(pki / "modality.pem"), str(pki / "modality.key"))
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers("ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES128-SHA")
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as raw:
        with pytest.raises(ssl.SSLError):
            context.wrap_socket(raw, server_hostname="127.0.0.1")


@pytest.mark.interop
def test_ae_title_bound_to_a_certificate_subject(pki: Path, tmp_path: Path, gateway_factory, caplog) -> None:
    """A stolen AE title alone gets nobody in: CT1 only with the modality's certificate."""
    callers = ["OTHER", {"ae_title": "CT1", "certificate_subject": f"CN=modality, O={SUBJECT}"}]
    gateway = gateway_factory(build_config(tmp_path, server={"tls": _server_tls(pki), "allowed_callers": callers},
                                           compression={"transfer_syntax": "keep"}))
    path = _sample(tmp_path)
    with caplog.at_level(logging.INFO, logger="gateway"):
        thief = _storescu(pki, gateway.port, path, cert="archive", calling="CT1")  # valid certificate, wrong subject
        assert thief.returncode != 0 and b"Calling AE Title Not Recognized" in thief.stderr
        assert any("calling=CT1" in m and "CN=archive" in m for m in _scp_messages(caplog))
        assert _storescu(pki, gateway.port, path, cert="modality", calling="CT1").returncode == 0
        assert _storescu(pki, gateway.port, path, cert="archive", calling="OTHER").returncode == 0  # plain entry
        assert _storescu(pki, gateway.port, path, cert="modality", calling="NOBODY").returncode != 0
    assert wait_until(lambda: len(_archived(tmp_path)) == 1, timeout=20)


@pytest.mark.interop
def test_serve_with_worker_processes_over_tls(pki: Path, tmp_path: Path) -> None:
    """The shipped command, configured from TOML: DCMTK over TLS in, a worker process recompresses."""
    port = free_port()
    config = tmp_path / "gateway.toml"
    config.write_text(f"""
[server]
port = {port}
allowed_callers = [{{ ae_title = "CT1", certificate_subject = "CN=modality, O={SUBJECT}" }}]
[server.tls]
certificate = "{pki / 'gateway.pem'}"
private_key = "{pki / 'gateway.key'}"
ca_certificates = "{pki / 'ca.pem'}"
[spool]
directory = "spool"
[compression]
transfer_syntax = "JPEGLSLossless"
processes = 1
[[destinations]]
name = "local"
kind = "folder"
path = "archive"
""")
    assert cli_main(["check-config", str(config)]) == 0
    log = tmp_path / "gateway.log"
    process = start_serve(config, log)
    try:
        assert wait_until(lambda: process.poll() is not None or listening(port), timeout=180), log.read_text()
        assert process.poll() is None, log.read_text()[-3000:]
        path = _sample(tmp_path)
        assert _storescu(pki, port, path, calling="CT1", tls=False).returncode != 0  # plain TCP: refused
        done = _storescu(pki, port, path, calling="CT1")
        assert done.returncode == 0, done.stderr.decode()
        assert wait_until(lambda: len(_archived(tmp_path)) == 1, timeout=120), log.read_text()[-3000:]
    finally:
        assert stop_process(process) == 0, log.read_text()[-3000:]
    got = dcmread(_archived(tmp_path)[0])
    assert got.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.80"
    assert (got.pixel_array == pydicom_file(CT_SMALL).pixel_array).all()
    text = log.read_text()
    assert "does not speak TLS" in text and "received sop=" in text and "calling=CT1" in text


def test_check_config_says_whether_tls_is_on(pki: Path, tmp_path: Path, capsys) -> None:
    tls = (f'allowed_callers = [{{ ae_title = "CT1", certificate_subject = "CN=modality, O={SUBJECT}" }}]\n'
           f'[server.tls]\ncertificate = "{pki / "gateway.pem"}"\nprivate_key = "{pki / "gateway.key"}"\n'
           f'ca_certificates = "{pki / "ca.pem"}"')
    dest = f'tls = {{ ca_certificates = "{pki / "ca.pem"}" }}'
    assert cli_main(["check-config", str(_toml(tmp_path, tls, dest))]) == 0
    out = capsys.readouterr().out
    assert f"tls     on: {pki / 'gateway.pem'} (client certificate required, chained to {pki / 'ca.pem'})" in out
    assert f"CT1 only with CN=modality, O={SUBJECT}" in out
    assert "PACS@127.0.0.1:104 over TLS" in out
    assert cli_main(["check-config", str(_toml(tmp_path))]) == 0
    out = capsys.readouterr().out
    assert "tls     off (plain TCP)" in out and "over TLS" not in out
    assert "limits  16 associations, 256 connections (32 per address), PDU 1048576 bytes" in out


def test_subjects_compare_whatever_their_spelling() -> None:
    peer = ((("organizationName", SUBJECT),), (("commonName", "ct1"),))
    for text in (f"CN=ct1,O={SUBJECT}", f"/O={SUBJECT}/CN=ct1", f"O = {SUBJECT}, CN = ct1"):
        assert subject_pairs(text) == subject_pairs(peer)
    assert subject_pairs("CN=ct1") != subject_pairs(peer)
    assert subject_pairs(r"CN=a\,b") == (("CN", "a,b"),)


# ------------------------------------------------------------------ destinations


def _forward_config(tmp_path: Path, pki: Path, port: int, ae: str, **tls: object) -> dict:
    return {"name": "archive", "kind": "dicom", "ae_title": ae, "host": "127.0.0.1", "port": port,
            "timeout_seconds": 10, "tls": {"ca_certificates": str(pki / "ca.pem"),
                                           "certificate": str(pki / "gateway.pem"),
                                           "private_key": str(pki / "gateway.key"), **tls}}


def _send_plain(port: int) -> None:
    from tests.conftest import send

    assert send(port, [pydicom_file(CT_SMALL)]) == [0]


@contextmanager
def _storescp_tls(pki: Path, tmp_path: Path, port: int, identity: str, out: Path, *extra: str) -> Iterator[None]:
    """DCMTK storescp listening as a TLS archive with `identity`'s certificate, writing what it gets into `out`."""
    with open(tmp_path / "storescp.log", "wb") as log:
        process = subprocess.Popen([require_dcmtk("storescp"), "-aet", "STORESCP", "+tls", str(pki / f"{identity}.key"),
                                    str(pki / f"{identity}.pem"), "+cf", str(pki / "ca.pem"), *extra, "-od", str(out),
                                    str(port)], stdout=log, stderr=subprocess.STDOUT,
                                   env=dict(os.environ, TCP_NODELAY="1"))
        try:
            assert wait_until(lambda: process.poll() is not None or listening(port), timeout=30)
            yield
        finally:
            process.terminate()
            process.wait(10)


@pytest.mark.interop
def test_gateway_forwards_to_dcmtk_storescp_over_tls(pki: Path, tmp_path: Path, gateway_factory) -> None:
    port = free_port()
    out = tmp_path / "storescp"
    out.mkdir()
    with _storescp_tls(pki, tmp_path, port, "archive", out, "--require-peer-cert"):
        gateway = gateway_factory(build_config(tmp_path, destinations=[
            _forward_config(tmp_path, pki, port, "STORESCP")], compression={"transfer_syntax": "keep"}))
        _send_plain(gateway.port)
        assert wait_until(lambda: len(list(out.iterdir())) == 1, timeout=30), (tmp_path / "storescp.log").read_text()
        got = dcmread(next(out.iterdir()))
        assert got.SOPInstanceUID == pydicom_file(CT_SMALL).SOPInstanceUID
        assert got.PixelData == pydicom_file(CT_SMALL).PixelData


@pytest.mark.interop
def test_a_reload_applies_a_renewed_client_certificate_to_an_archive(pki: Path, tmp_path: Path,
                                                                     gateway_factory) -> None:
    """Our certificate towards an archive renewed in place (same file names) and reloaded: the next
    association presents the new one.  Without it, an expired client certificate stays in use until a
    restart, however often the operator reloads."""
    port = free_port()
    out = tmp_path / "storescp"
    out.mkdir()
    live = tmp_path / "tls"
    live.mkdir()
    shutil.copy(pki / "expired.pem", live / "client.pem")
    shutil.copy(pki / "expired.key", live / "client.key")
    toml = tmp_path / "gateway.toml"
    toml.write_text(f"""
[server]
port = {free_port()}
[spool]
directory = "spool"
[compression]
transfer_syntax = "keep"
[retry]
max_attempts = 10000
base_seconds = 0.2
cap_seconds = 0.5
probe_seconds = 0.5
[[destinations]]
name = "archive"
kind = "dicom"
ae_title = "STORESCP"
host = "127.0.0.1"
port = {port}
timeout_seconds = 10
tls = {{ ca_certificates = "{pki / 'ca.pem'}", certificate = "tls/client.pem", private_key = "tls/client.key" }}
""")
    with _storescp_tls(pki, tmp_path, port, "archive", out, "--require-peer-cert"):
        gateway = gateway_factory(load_config(toml))
        _send_plain(gateway.port)
        assert wait_until(lambda: any(f.last_error for f in gateway.forwarders["archive"]), timeout=30)
        assert not list(out.iterdir()), "the archive refuses the expired certificate"
        shutil.copy(pki / "modality.pem", live / "client.pem")  # renewed in place
        shutil.copy(pki / "modality.key", live / "client.key")
        assert gateway.reload() is None
        assert wait_until(lambda: len(list(out.iterdir())) == 1, timeout=30), \
            (tmp_path / "storescp.log").read_text()[-2000:]


@pytest.mark.interop
def test_archive_with_a_certificate_from_another_ca_is_not_trusted(pki: Path, tmp_path: Path,
                                                                   gateway_factory) -> None:
    port = free_port()
    with _storescp_tls(pki, tmp_path, port, "impostor", tmp_path):
        gateway = gateway_factory(build_config(tmp_path, destinations=[
            _forward_config(tmp_path, pki, port, "STORESCP")], compression={"transfer_syntax": "keep"},
            retry={"max_attempts": 2, "base_seconds": 0.1, "cap_seconds": 0.1, "probe_seconds": 0.1}))
        _send_plain(gateway.port)
        assert wait_until(lambda: gateway.spool.counts().get("dead", 0) == 1, timeout=30)
        dead = next(iter(gateway.spool.jobs_in("dead")))
        assert "certificate" in (dead.reason or "").lower(), dead.reason


@pytest.fixture(scope="module")
def orthanc_tls(pki: Path, tmp_path_factory: pytest.TempPathFactory):
    executable = program("Orthanc")
    if executable is None:
        pytest.skip("Orthanc is not installed (Debian package 'orthanc')")
    server = Orthanc(executable, tmp_path_factory.mktemp("orthanc-tls"), extra={
        "DicomTlsEnabled": True,
        "DicomTlsCertificate": str(pki / "archive.pem"),
        "DicomTlsPrivateKey": str(pki / "archive.key"),
        "DicomTlsTrustedCertificates": str(pki / "ca.pem"),
        "DicomTlsRemoteCertificateRequired": True,
    })
    if server.process.poll() is not None:
        pytest.fail(f"Orthanc exited at start: {(server.root / 'orthanc.log').read_text()[-2000:]}")
    yield server
    server.stop()


@pytest.mark.interop
def test_gateway_forwards_to_orthanc_over_tls(pki: Path, tmp_path: Path, gateway_factory, orthanc_tls) -> None:
    gateway = gateway_factory(build_config(tmp_path, destinations=[
        _forward_config(tmp_path, pki, orthanc_tls.dicom_port, orthanc_tls.aet)]))
    _send_plain(gateway.port)
    assert wait_until(lambda: len(orthanc_tls.instances()) == 1, timeout=30), \
        (orthanc_tls.root / "orthanc.log").read_text()[-2000:]
    got = dcmread(__import__("io").BytesIO(orthanc_tls.file(orthanc_tls.instances()[0])))
    assert got.SOPInstanceUID == pydicom_file(CT_SMALL).SOPInstanceUID
    assert got.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.5"  # recompressed, then carried over TLS
    # Orthanc requires our certificate: without one, its TLS port refuses the association.
    from gateway.errors import NetworkError
    from gateway.net.scu import Association

    anonymous = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    with pytest.raises(NetworkError):
        with Association.request("127.0.0.1", orthanc_tls.dicom_port, called_ae=orthanc_tls.aet,
                                 calling_ae="GATEWAY", contexts=[("1.2.840.10008.1.1", "1.2.840.10008.1.2")],
                                 timeout=5, connect_timeout=5, tls=anonymous) as assoc:
            assoc.c_echo()


# ------------------------------------------------------------------ configuration


def _toml(tmp_path: Path, server_extra: str = "", dest_extra: str = "") -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(f"""
[server]
port = {free_port()}
{server_extra}
[spool]
directory = "spool"
[[destinations]]
name = "pacs"
kind = "dicom"
ae_title = "PACS"
host = "127.0.0.1"
port = 104
{dest_extra}
""")
    return path


@pytest.mark.parametrize("server_tls,key", [
    ('[server.tls]\ncertificate = "missing.pem"\nprivate_key = "PKI/gateway.key"\nca_certificates = "PKI/ca.pem"',
     "server.tls.certificate"),
    ('[server.tls]\ncertificate = "PKI/gateway.pem"\nprivate_key = "PKI/archive.key"\nca_certificates = "PKI/ca.pem"',
     "server.tls.private_key"),
    ('[server.tls]\ncertificate = "PKI/gateway.pem"\nprivate_key = "PKI/gateway.pem"\nca_certificates = "PKI/ca.pem"',
     "server.tls.private_key"),
    ('[server.tls]\ncertificate = "PKI/gateway.pem"\nprivate_key = "PKI/gateway.key"\nca_certificates = "PKI/gateway.key"',
     "server.tls.ca_certificates"),
    ('[server.tls]\ncertificate = "PKI/gateway.pem"\nprivate_key = "PKI/gateway.key"',
     "server.tls.ca_certificates"),
    (('[server.tls]\ncertificate = "PKI/gateway.pem"\nprivate_key = "PKI/gateway.key"\nca_certificates = "PKI/ca.pem"\n'
      'require_client_certificate = "yes"'), "server.tls.require_client_certificate"),
    (('[server.tls]\ncertificate = "PKI/gateway.pem"\nprivate_key = "PKI/gateway.key"\nca_certificates = "PKI/ca.pem"\n'
      'cipher = "x"'), "server.tls.cipher"),
])
def test_server_tls_errors_name_the_key(pki: Path, tmp_path: Path, server_tls: str, key: str) -> None:
    path = _toml(tmp_path, server_tls.replace("PKI", str(pki)))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value).startswith(key), str(caught.value)


@pytest.mark.parametrize("tls,key", [
    ('tls = { certificate = "PKI/gateway.pem", private_key = "PKI/gateway.key" }', "destinations[0].tls.ca_certificates"),
    ('tls = { ca_certificates = "PKI/nothing.pem" }', "destinations[0].tls.ca_certificates"),
    ('tls = { ca_certificates = "PKI/ca.pem", certificate = "PKI/gateway.pem" }', "destinations[0].tls.private_key"),
    ('tls = { ca_certificates = "PKI/ca.pem", verify = false }', "destinations[0].tls.verify"),
])
def test_destination_tls_errors_name_the_key(pki: Path, tmp_path: Path, tls: str, key: str) -> None:
    path = _toml(tmp_path, dest_extra=tls.replace("PKI", str(pki)))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value).startswith(key), str(caught.value)


def test_certificate_bound_caller_needs_tls_and_a_valid_subject(pki: Path, tmp_path: Path) -> None:
    bound = 'allowed_callers = [{ ae_title = "CT1", certificate_subject = "CN=ct1" }]'
    with pytest.raises(ConfigError, match=r"^server\.allowed_callers"):
        load_config(_toml(tmp_path, bound))
    with pytest.raises(ConfigError, match=r"^server\.allowed_callers\[0\]\.certificate_subject"):
        load_config(_toml(tmp_path, 'allowed_callers = [{ ae_title = "CT1", certificate_subject = "ct1" }]'))
    with pytest.raises(ConfigError, match=r"^server\.allowed_callers\[1\]\.subject"):
        load_config(_toml(tmp_path, 'allowed_callers = ["A", { ae_title = "CT1", subject = "CN=x" }]'))
    good = load_config(_toml(tmp_path, bound + f'\n[server.tls]\ncertificate = "{pki}/gateway.pem"\n'
                             f'private_key = "{pki}/gateway.key"\nca_certificates = "{pki}/ca.pem"'))
    assert good.server.allowed_callers == ("CT1",)
    assert good.server.caller_certificates[0].certificate_subject == (("CN", "ct1"),)
    assert good.server.tls is not None and good.server.tls.require_client_certificate


def test_reload_validates_tls_files_and_applies_new_ones(pki: Path, tmp_path: Path, gateway_factory) -> None:
    tls = f'[server.tls]\ncertificate = "{pki}/gateway.pem"\nprivate_key = "{pki}/gateway.key"\nca_certificates = "{pki}/ca.pem"'
    path = _toml(tmp_path, tls)
    config = load_config(path)
    gateway = gateway_factory(config)
    before = gateway.server.tls
    text = path.read_text()
    path.write_text(text.replace("gateway.key", "archive.key"))
    problem = gateway.reload()
    assert problem is not None and problem.startswith("server.tls.private_key")
    assert gateway.server.tls is before
    path.write_text(text.replace("gateway.pem", "archive.pem").replace("gateway.key", "archive.key"))
    assert gateway.reload() is None
    assert gateway.server.tls is not before
    context = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    context.load_cert_chain(str(pki / "modality.pem"), str(pki / "modality.key"))
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as sock:
            subject = dict(item for rdn in sock.getpeercert()["subject"] for item in rdn)
    assert subject["commonName"] == "archive"  # the renewed certificate serves the next handshake
    path.write_text(text.split("[server.tls]")[0] + text[text.index("[spool]"):])
    assert "server.tls" in (gateway.reload() or "")
