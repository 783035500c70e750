"""The expiry dates of the TLS certificates in use: logged when near or past, a gauge, and /readyz."""

from __future__ import annotations

import logging
import shutil
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx
import pytest

from gateway.net.certificates import WARN_DAYS, read_dates
from tests.conftest import build_config, free_port
from tests.test_tls import _toml, pki  # noqa: F401 - pki: the session's test PKI (config/make-test-ca.sh)


def _openssl_end(path: Path) -> float:
    """notAfter as the openssl command reads it (the truth these tests compare with)."""
    out = subprocess.run([shutil.which("openssl") or "openssl", "x509", "-enddate", "-noout", "-in", str(path)],
                         capture_output=True, text=True, check=True, timeout=30).stdout.strip()
    stamp = out.split("=", 1)[1]  # e.g. "Jan  4 16:00:11 2027 GMT"
    return datetime.strptime(stamp, "%b %d %H:%M:%S %Y %Z").replace(tzinfo=timezone.utc).timestamp()


def _tls(pki: Path, name: str) -> dict:  # noqa: F811
    return {"certificate": str(pki / f"{name}.pem"), "private_key": str(pki / f"{name}.key"),
            "ca_certificates": str(pki / "ca.pem")}


@pytest.mark.parametrize("name", ["ca", "gateway", "expired", "other-ca"])
def test_dates_are_those_openssl_reads(pki: Path, name: str) -> None:  # noqa: F811
    ((subject, not_after),) = read_dates(pki / f"{name}.pem")
    assert subject == name
    assert not_after == _openssl_end(pki / f"{name}.pem")


def test_every_certificate_of_a_bundle_is_read_in_order(pki: Path, tmp_path: Path) -> None:  # noqa: F811
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes((pki / "ca.pem").read_bytes() + (pki / "expired.pem").read_bytes())
    assert [s for s, _ in read_dates(bundle)] == ["ca", "expired"]
    assert read_dates(bundle)[1][1] == _openssl_end(pki / "expired.pem")


def test_an_expired_receiver_certificate_is_an_error_a_gauge_and_not_ready(pki: Path, tmp_path: Path,  # noqa: F811
                                                                          gateway_factory, caplog) -> None:
    web = free_port()
    config = build_config(tmp_path, server={"tls": _tls(pki, "expired")}, web={"port": web})
    with caplog.at_level(logging.INFO, logger="gateway"):
        gateway_factory(config)
    errors = [r.getMessage() for r in caplog.records if r.name == "gateway.tls" and r.levelno == logging.ERROR]
    assert any("server certificate 'expired'" in m and "expired" in m for m in errors), errors
    ready = httpx.get(f"http://127.0.0.1:{web}/readyz", timeout=10)
    assert ready.status_code == 503 and "TLS certificate 'expired' has expired" in ready.text
    metrics = httpx.get(f"http://127.0.0.1:{web}/metrics", timeout=10).text
    gauges = {line.split("{", 1)[1].split("}", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
              if line.startswith("dicom_gateway_tls_certificate_expiry_timestamp_seconds{")}
    assert gauges['subject="expired",use="server"'] == _openssl_end(pki / "expired.pem")
    assert gauges['subject="ca",use="server_ca"'] == _openssl_end(pki / "ca.pem")


def test_a_certificate_near_expiry_is_a_warning_and_the_gateway_stays_ready(pki: Path, tmp_path: Path,  # noqa: F811
                                                                           gateway_factory, caplog) -> None:
    days = (_openssl_end(pki / "gateway.pem") - time.time()) / 86400
    assert 0 < days <= WARN_DAYS, "make-test-ca.sh issues certificates for 30 days"
    archive = {"name": "pacs", "kind": "dicom", "ae_title": "ARCHIVE", "host": "127.0.0.1", "port": free_port(),
               "tls": {"ca_certificates": str(pki / "ca.pem"), "certificate": str(pki / "modality.pem"),
                       "private_key": str(pki / "modality.key")}}
    config = build_config(tmp_path, [archive], server={"tls": _tls(pki, "gateway")})
    with caplog.at_level(logging.INFO, logger="gateway"):
        gateway = gateway_factory(config)
    warned = [r.getMessage() for r in caplog.records if r.name == "gateway.tls" and r.levelno == logging.WARNING]
    for use, subject in (("server", "gateway"), ("server_ca", "ca"), ("destination pacs", "modality"),
                         ("destination_ca pacs", "ca")):
        assert any(m.startswith(f"{use} certificate '{subject}'") and "expires in" in m for m in warned), warned
    assert gateway.not_ready() is None
    assert {(c.use, c.subject) for c in gateway.certificates} == {
        ("server", "gateway"), ("server_ca", "ca"), ("destination pacs", "modality"), ("destination_ca pacs", "ca")}


def test_a_reload_reads_the_renewed_certificate(pki: Path, tmp_path: Path, gateway_factory) -> None:  # noqa: F811
    from gateway.config import load_config

    live = tmp_path / "tls"
    live.mkdir()
    for name in ("expired", "gateway", "ca"):
        for ext in ("pem", "key"):
            shutil.copy(pki / f"{name}.{ext}", live / f"{name}.{ext}")
    shutil.copy(live / "expired.pem", live / "server.pem")
    shutil.copy(live / "expired.key", live / "server.key")
    toml = tmp_path / "gateway.toml"
    toml.write_text(f'[server]\nport = {free_port()}\n[server.tls]\ncertificate = "tls/server.pem"\n'
                    f'private_key = "tls/server.key"\nca_certificates = "tls/ca.pem"\n[spool]\ndirectory = "spool"\n'
                    '[[destinations]]\nname = "local"\nkind = "folder"\npath = "archive"\n')
    gateway = gateway_factory(load_config(toml))
    assert "has expired" in (gateway.not_ready() or "")
    shutil.copy(live / "gateway.pem", live / "server.pem")  # renewed in place, then reloaded
    shutil.copy(live / "gateway.key", live / "server.key")
    assert gateway.reload() is None
    assert gateway.not_ready() is None
    assert [c.subject for c in gateway.certificates if c.use == "server"] == ["gateway"]


def test_check_config_lists_each_certificate_and_its_expiry(pki: Path, tmp_path: Path, capsys) -> None:  # noqa: F811
    from datetime import datetime, timezone

    from gateway.cli import main

    toml = _toml(tmp_path, f'[server.tls]\ncertificate = "{pki / "expired.pem"}"\nprivate_key = "{pki / "expired.key"}"\n'
                 f'ca_certificates = "{pki / "ca.pem"}"',
                 f'tls = {{ ca_certificates = "{pki / "ca.pem"}", certificate = "{pki / "gateway.pem"}", '
                 f'private_key = "{pki / "gateway.key"}" }}')
    assert main(["check-config", str(toml)]) == 0  # valid: an expired certificate is said, not refused
    lines = [line.strip() for line in capsys.readouterr().out.splitlines() if line.strip().startswith("cert ")]

    def day(name: str) -> str:
        return datetime.fromtimestamp(_openssl_end(pki / f"{name}.pem"), timezone.utc).strftime("%Y-%m-%d %H:%M UTC")

    assert lines == [
        f"cert    server: expired expires {day('expired')}, EXPIRED: peers refuse it",
        f"cert    server_ca: ca expires {day('ca')}, in 30 day(s): renew it soon",
        f"cert    destination pacs: gateway expires {day('gateway')}, in 30 day(s): renew it soon",
        f"cert    destination_ca pacs: ca expires {day('ca')}, in 30 day(s): renew it soon",
    ], lines


def test_the_console_shows_each_certificate_and_warns_on_its_overview(pki: Path, tmp_path: Path,  # noqa: F811
                                                                      gateway_factory) -> None:
    import re
    from datetime import datetime, timezone

    web = free_port()
    gateway_factory(build_config(tmp_path, server={"tls": _tls(pki, "expired")}, web={"port": web}))
    page = httpx.get(f"http://127.0.0.1:{web}/config", timeout=10).text
    rows = re.findall(r'<tr class="certificate[^"]*" data-state="(\w+)">\s*<td>([^<]*)</td><td>([^<]*)</td>'
                      r'<td><code>[^<]*</code></td><td>([^<]*)</td>', page)
    expired = datetime.fromtimestamp(_openssl_end(pki / "expired.pem"), timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    assert ("expired", "server", "expired", expired) in rows, rows
    assert [(state, use, subject) for state, use, subject, _ in rows if use == "server_ca"] == [
        ("expiring", "server_ca", "ca")]
    overview = httpx.get(f"http://127.0.0.1:{web}/", timeout=10).text
    notes = re.findall(r'<p class="note bad certificate-attention">([^<]*)<', overview)
    assert any(n.startswith("TLS certificate expired (server) has expired") for n in notes), notes
    assert any(n.startswith("TLS certificate ca (server_ca) expires in") for n in notes), notes


def test_without_tls_the_console_says_so(tmp_path: Path, gateway_factory) -> None:
    web = free_port()
    gateway_factory(build_config(tmp_path, web={"port": web}))
    assert 'id="no-certificates"' in httpx.get(f"http://127.0.0.1:{web}/config", timeout=10).text
    assert "certificate-attention" not in httpx.get(f"http://127.0.0.1:{web}/", timeout=10).text


def test_certificates_near_expiry_are_said_again_every_day(pki: Path, tmp_path: Path, gateway_factory,  # noqa: F811
                                                           caplog) -> None:
    gateway = gateway_factory(build_config(tmp_path, server={"tls": _tls(pki, "gateway")}))
    now = time.time()
    caplog.clear()  # what the start said
    with caplog.at_level(logging.WARNING, logger="gateway.tls"):
        assert not gateway.report_certificates(now + 3600)  # an hour later: not yet
        assert not [r for r in caplog.records if r.name == "gateway.tls"]
        assert gateway.report_certificates(now + 86400 + 60)  # a day later: again, with the days left then
    said = [r.getMessage() for r in caplog.records if r.name == "gateway.tls"]
    assert any(m.startswith("server certificate 'gateway'") and "expires in 29." in m for m in said), said


def _not_yet_valid(pki: Path, folder: Path) -> dict:  # noqa: F811
    """A certificate of the test CA valid from a year from now (a renewal installed too early)."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca = x509.load_pem_x509_certificate((pki / "ca.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((pki / "ca.key").read_bytes(), None)
    key = ec.generate_private_key(ec.SECP256R1())
    start = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=365)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "early")]))
            .issuer_name(ca.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(start + dt.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
            .sign(ca_key, hashes.SHA256()))  # type: ignore[arg-type]
    (folder / "early.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "early.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
    (folder / "early.key").chmod(0o600)
    return {"certificate": str(folder / "early.pem"), "private_key": str(folder / "early.key"),
            "ca_certificates": str(pki / "ca.pem")}


def test_a_certificate_not_yet_valid_is_an_error_and_shown_as_such(pki: Path, tmp_path: Path,  # noqa: F811
                                                                   gateway_factory, caplog) -> None:
    """Callers refuse a certificate before its notBefore as they refuse an expired one; only notAfter was read,
    so such a certificate was taken at start or reload without a word."""
    web = free_port()
    with caplog.at_level(logging.INFO, logger="gateway"):
        gateway_factory(build_config(tmp_path, server={"tls": _not_yet_valid(pki, tmp_path)}, web={"port": web}))
    errors = [r.getMessage() for r in caplog.records if r.name == "gateway.tls" and r.levelno == logging.ERROR]
    assert any("server certificate 'early'" in m and "not valid for another 36" in m for m in errors), errors
    page = httpx.get(f"http://127.0.0.1:{web}/config", timeout=10).text
    assert 'data-state="not_yet_valid"' in page and "not valid before" in page
    overview = httpx.get(f"http://127.0.0.1:{web}/", timeout=10).text
    assert "TLS certificate early (server) is not valid before" in overview


def test_a_private_key_others_can_read_is_said_at_start(pki: Path, tmp_path: Path, gateway_factory,  # noqa: F811
                                                        caplog) -> None:
    shutil.copy(pki / "gateway.key", tmp_path / "open.key")
    (tmp_path / "open.key").chmod(0o644)
    tls = {**_tls(pki, "gateway"), "private_key": str(tmp_path / "open.key")}
    with caplog.at_level(logging.INFO, logger="gateway"):
        gateway_factory(build_config(tmp_path, server={"tls": tls}))
    warned = [r.getMessage() for r in caplog.records if r.name == "gateway.tls" and "open.key" in r.getMessage()]
    assert warned and "mode 0644" in warned[0] and "chmod 600" in warned[0], warned
    caplog.clear()
    (tmp_path / "open.key").chmod(0o640)  # a group of its own (Debian's ssl-cert) is the operator's choice
    (tmp_path / "again").mkdir()
    with caplog.at_level(logging.INFO, logger="gateway"):
        gateway_factory(build_config(tmp_path / "again", server={"tls": tls}))
    assert not [r for r in caplog.records if "open.key" in r.getMessage()]


def _handshake_subject(pki: Path, port: int) -> str:  # noqa: F811
    """The common name of the certificate the receiver presents in a real TLS handshake."""
    import socket
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(str(pki / "ca.pem"))
    context.load_cert_chain(str(pki / "modality.pem"), str(pki / "modality.key"))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as sock:
            subject = dict(pair for rdn in sock.getpeercert()["subject"] for pair in rdn)
    return subject["commonName"]


def _live_toml(pki: Path, tmp_path: Path, first: str) -> Path:  # noqa: F811
    """A configuration file whose receiver certificate is tls/server.pem, a copy of `first`'s."""
    live = tmp_path / "tls"
    live.mkdir()
    for ext in ("pem", "key"):
        shutil.copy(pki / f"{first}.{ext}", live / f"server.{ext}")
    (live / "server.key").chmod(0o600)
    toml = tmp_path / "gateway.toml"
    toml.write_text(f'[server]\nport = {free_port()}\n[server.tls]\ncertificate = "tls/server.pem"\n'
                    f'private_key = "tls/server.key"\nca_certificates = "{pki / "ca.pem"}"\n'
                    '[spool]\ndirectory = "spool"\n[compression]\nprocesses = 0\n'
                    '[[destinations]]\nname = "local"\nkind = "folder"\npath = "archive"\n')
    return toml


def test_a_reload_refuses_a_receiver_certificate_callers_would_refuse(pki: Path, tmp_path: Path,  # noqa: F811
                                                                     gateway_factory, caplog) -> None:
    """An expired certificate, or one not yet valid, installed by mistake and reloaded replaced a good one:
    every caller's next handshake failed.  The reload is refused, naming the key and the file, and the
    receiver goes on presenting the certificate in use."""
    from gateway.config import load_config

    toml = _live_toml(pki, tmp_path, "gateway")
    gateway = gateway_factory(load_config(toml))
    assert _handshake_subject(pki, gateway.port) == "gateway"
    early = _not_yet_valid(pki, tmp_path)
    server = tmp_path / "tls" / "server.pem"
    for bad_pem, bad_key, said in ((pki / "expired.pem", pki / "expired.key", "'expired' expired on "),
                                   (Path(early["certificate"]), Path(early["private_key"]),
                                    "'early' is not valid before ")):
        shutil.copy(bad_pem, server)
        shutil.copy(bad_key, tmp_path / "tls" / "server.key")
        with caplog.at_level(logging.INFO, logger="gateway"):
            error = gateway.reload()
        assert error is not None and error.startswith(f"server.tls.certificate: {server}: certificate {said}"), error
        assert "callers would refuse it" in error and gateway.reload_error == error
        assert any(error in r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)
        assert _handshake_subject(pki, gateway.port) == "gateway", "the certificate in use stays"
        assert [c.subject for c in gateway.certificates if c.use == "server"] == ["gateway"]
        assert gateway.not_ready() is None
    shutil.copy(pki / "gateway.pem", server)  # a usable one again
    shutil.copy(pki / "gateway.key", tmp_path / "tls" / "server.key")
    assert gateway.reload() is None and gateway.reload_error is None


def test_a_reload_keeping_the_expired_certificate_in_use_is_applied(pki: Path, tmp_path: Path,  # noqa: F811
                                                                    gateway_factory) -> None:
    """Started on an expired certificate (said, and /readyz fails), the gateway may still have its routes and
    destinations changed while the renewal is awaited: refusing the reload would protect no caller."""
    from gateway.config import load_config

    toml = _live_toml(pki, tmp_path, "expired")
    gateway = gateway_factory(load_config(toml))
    assert "has expired" in (gateway.not_ready() or "")
    toml.write_text(toml.read_text() + '[[destinations]]\nname = "second"\nkind = "folder"\npath = "archive2"\n')
    assert gateway.reload() is None
    assert [d.name for d in gateway.config.destinations] == ["local", "second"]


def test_a_receiver_certificate_not_yet_valid_makes_the_gateway_not_ready(pki: Path, tmp_path: Path,  # noqa: F811
                                                                          gateway_factory) -> None:
    """Callers refuse it as they refuse an expired one, yet /readyz said ready: a load balancer kept sending
    modalities to a gateway none of them could talk to."""
    web = free_port()
    gateway_factory(build_config(tmp_path, server={"tls": _not_yet_valid(pki, tmp_path)}, web={"port": web}))
    ready = httpx.get(f"http://127.0.0.1:{web}/readyz", timeout=10)
    assert ready.status_code == 503, ready.text
    assert "TLS certificate 'early' is not valid before " in ready.text and "callers refuse it" in ready.text


def test_check_config_lists_a_certificate_not_yet_valid_as_such(pki: Path, tmp_path: Path, capsys) -> None:  # noqa: F811
    """It was listed by its days to expiry ("in 395 day(s)"), as if peers took it."""
    from gateway.cli import main

    early = _not_yet_valid(pki, tmp_path)
    toml = _toml(tmp_path, f'[server.tls]\ncertificate = "{early["certificate"]}"\n'
                 f'private_key = "{early["private_key"]}"\nca_certificates = "{pki / "ca.pem"}"')
    assert main(["check-config", str(toml)]) == 0
    lines = [line.strip() for line in capsys.readouterr().out.splitlines() if line.strip().startswith("cert ")]
    server = next(line for line in lines if line.startswith("cert    server: early"))

    def day(epoch: float) -> str:
        return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")

    from cryptography import x509

    cert = x509.load_pem_x509_certificate(Path(early["certificate"]).read_bytes())
    assert server == (f"cert    server: early expires {day(cert.not_valid_after_utc.timestamp())}, NOT YET VALID: "
                      f"peers refuse it until then (valid from {day(cert.not_valid_before_utc.timestamp())})"), server
