"""Config validation: every shipped example loads; every bad value names its key."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from gateway.config import KEEP, PRIVATE_VERSION, load_config, parse_config
from gateway.errors import ConfigError
from tests.test_tls import pki  # noqa: F401 - the session's test CA

REPO = Path(__file__).resolve().parent.parent

GOOD = {
    "server": {"ae_title": "GATEWAY", "host": "127.0.0.1", "port": 11112, "allowed_callers": []},
    "spool": {"directory": "spool"},
    "compression": {"transfer_syntax": "RLELossless", "modality": {"US": "JPEGLSLossless", "MG": "keep"}},
    "destinations": [
        {"name": "archive", "kind": "dicom", "ae_title": "ARCHIVE", "host": "127.0.0.1", "port": 4242,
         "transfer_syntaxes": ["RLELossless", "1.2.840.10008.1.2.4.80"]},
        {"name": "local", "kind": "folder", "path": "archive"},
    ],
    "routes": [
        {"destinations": ["archive"]},
        {"destinations": ["local"], "modality": ["MR"], "calling_ae": ["MR1"]},
    ],
}


def test_good_config_loads_with_resolved_values(tmp_path: Path) -> None:
    config = parse_config(copy.deepcopy(GOOD), tmp_path)
    assert config.server.port == 11112
    assert config.spool.directory == tmp_path / "spool"
    assert config.compression.transfer_syntax == "1.2.840.10008.1.2.5"
    assert config.compression.target_for("US") == "1.2.840.10008.1.2.4.80"
    assert config.compression.target_for("MG") == KEEP
    assert config.compression.target_for("CT") == "1.2.840.10008.1.2.5"
    assert config.destinations[0].transfer_syntaxes == ("1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.80")
    assert config.destinations[1].path == tmp_path / "archive"


def test_routing_unions_matching_routes(tmp_path: Path) -> None:
    config = parse_config(copy.deepcopy(GOOD), tmp_path)
    assert [d.name for d in config.destinations_for("CT1", "CT", "1.2.3")] == ["archive"]
    assert [d.name for d in config.destinations_for("MR1", "MR", "1.2.3")] == ["archive", "local"]
    assert [d.name for d in config.destinations_for("MR2", "MR", "1.2.3")] == ["archive"]


def test_without_routes_everything_goes_everywhere(tmp_path: Path) -> None:
    data = copy.deepcopy(GOOD)
    del data["routes"]
    config = parse_config(data, tmp_path)
    assert [d.name for d in config.destinations_for("X", "OT", "1.2")] == ["archive", "local"]


def test_retry_backoff_is_exponential_and_capped(tmp_path: Path) -> None:
    data = copy.deepcopy(GOOD)
    data["retry"] = {"base_seconds": 1, "cap_seconds": 5, "max_attempts": 3}
    retry = parse_config(data, tmp_path).retry
    assert [retry.delay(n) for n in range(1, 6)] == [1, 2, 4, 5, 5]


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "config").glob("*.toml")))
def test_shipped_configs_are_valid(name: str) -> None:
    config = load_config(REPO / "config" / name)
    assert config.destinations


@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0", "::", "::1", "fe80::1%eth0", "localhost",
                                  "pacs-1.hospital.example", "pacs.example.", "10.0.0.1"])
def test_hosts_are_ip_addresses_or_host_names(tmp_path: Path, host: str) -> None:
    data = copy.deepcopy(GOOD)
    data["server"]["host"] = data["destinations"][0]["host"] = host
    config = parse_config(data, tmp_path)
    assert config.server.host == config.destinations[0].host == host


def test_shipped_default_listens_and_archives_to_a_folder() -> None:
    config = load_config(REPO / "config" / "gateway.toml")
    assert (config.server.host, config.server.port, config.server.ae_title) == ("127.0.0.1", 11112, "GATEWAY")
    assert [(d.kind, d.path.resolve()) for d in config.destinations] == [("folder", (REPO / "archive").resolve())]
    assert config.spool.directory.resolve() == (REPO / "spool").resolve()
    assert config.compression.transfer_syntax == "1.2.840.10008.1.2.5"


def _set(data: dict, path: str, value) -> None:
    """Set a dotted path like 'destinations.0.port' (value None deletes)."""
    parts = path.split(".")
    node = data
    for part in parts[:-1]:
        node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
    last = parts[-1]
    if value is None:
        del node[int(last) if last.isdigit() else last]
    elif last.isdigit():
        node[int(last)] = value
    else:
        node[last] = value


BAD = [
    ("server.port", 70000, "server.port", "1..65535, got 70000"),
    ("server.port", "11112", "server.port", "integer"),
    ("server.ae_title", "A_TITLE_THAT_IS_TOO_LONG", "server.ae_title", "at most 16"),
    ("server.ae_title", "", "server.ae_title", "empty"),
    ("server.allowed_callers", "CT1", "server.allowed_callers", "list"),
    ("server.allowed_callers", ["OK", 5], "server.allowed_callers[1]", "string"),
    ("server.colour", "blue", "server.colour", "unknown key"),
    ("spool.directory", 3, "spool.directory", "string"),
    ("spool.keep_done_hours", -1, "spool.keep_done_hours", "0..87600, got -1"),
    ("spool.keep_done_hours", "a week", "spool.keep_done_hours", "number"),
    ("compression.transfer_syntax", "NoSuchSyntax", "compression.transfer_syntax", "unknown transfer syntax"),
    ("compression.transfer_syntax", "JPEGBaseline8Bit", "compression.transfer_syntax", "no encoder"),
    ("compression.verify", "yes", "compression.verify", "true or false"),
    ("compression.processes", -1, "compression.processes", "0..64, got -1"),
    ("compression.processes", "all", "compression.processes", "0..64 or \"auto\", got 'all'"),
    ("compression.processes", 1.5, "compression.processes", "must be an integer"),
    ("compression.timeout_seconds", 0, "compression.timeout_seconds", "must be 1..86400, got 0"),
    ("compression.timeout_seconds", "10 min", "compression.timeout_seconds", "must be a number"),
    ("compression.private_version", 3, "compression.private_version", "must be 1 or 2, got 3"),
    ("compression.private_version", 0, "compression.private_version", "must be 1 or 2, got 0"),
    ("compression.private_version", "2", "compression.private_version", "must be 1 or 2, got '2'"),
    ("compression.private_version", 2.0, "compression.private_version", "must be 1 or 2, got 2.0"),
    ("compression.private_version", True, "compression.private_version", "must be 1 or 2, got True"),
    ("compression.modality.US", "Bogus", "compression.modality.US", "unknown transfer syntax"),
    ("compression.modality.us", "RLELossless", "compression.modality.us", "upper-case"),
    ("destinations.0.port", 70000, "destinations[0].port", "must be 1..65535, got 70000"),
    ("destinations.0.associations", 0, "destinations[0].associations", "1..16, got 0"),
    ("destinations.0.kind", "ftp", "destinations[0].kind", "'dicom' or 'folder'"),
    ("destinations.0.host", None, "destinations[0].host", "string"),
    ("destinations.0.host", "pacs host", "destinations[0].host", "IP address or a host name, got 'pacs host'"),
    ("destinations.0.host", "pacs_1.example", "destinations[0].host", "IP address or a host name"),
    ("server.host", "not a host!!", "server.host", "IP address or a host name, got 'not a host!!'"),
    ("server.host", "10.0.0.256", "server.host", "IP address or a host name"),
    ("destinations.0.transfer_syntaxes", ["keep"], "destinations[0].transfer_syntaxes[0]", "not a transfer syntax"),
    ("destinations.1.path", None, "destinations[1].path", "string"),
    ("destinations.1.name", "archive", "destinations[1].name", "duplicate"),
    ("destinations.1.name", "a b", "destinations[1].name", "letters"),
    ("destinations.1.extra", 1, "destinations[1].extra", "unknown key"),
    ("destinations", [], "destinations", "at least one"),
    ("routes.0.destinations", ["nowhere"], "routes[0].destinations[0]", "no destination named 'nowhere'"),
    ("routes.0.destinations", [], "routes[0].destinations", "at least one"),
    ("routes.1.sop_class", ["not a uid"], "routes[1].sop_class[0]", "SOP class"),
    ("retry.max_attempts", 0, "retry.max_attempts", "1..1000000"),
    ("retry.cap_seconds", 0.5, "retry.cap_seconds", ">= base_seconds"),
    ("logging.level", "LOUD", "logging.level", "one of"),
    ("spoool", {}, "spoool", "unknown key"),
]


@pytest.mark.parametrize("path, value, key, words", BAD, ids=[f"{b[2]}={b[1]!r}"[:60] for b in BAD])
def test_bad_values_name_the_key(tmp_path: Path, path: str, value, key: str, words: str) -> None:
    data = copy.deepcopy(GOOD)
    if path == "retry.cap_seconds":
        data["retry"] = {"base_seconds": 2}
    _set(data, path, value)
    with pytest.raises(ConfigError) as info:
        parse_config(data, tmp_path)
    assert info.value.key == key
    assert str(info.value).startswith(f"{key}: ")
    assert words in str(info.value)


def test_finished_jobs_are_kept_a_week_unless_configured(tmp_path: Path) -> None:
    assert parse_config(copy.deepcopy(GOOD), tmp_path).spool.keep_done_hours == 168.0
    data = copy.deepcopy(GOOD)
    _set(data, "spool.keep_done_hours", 0)
    assert parse_config(data, tmp_path).spool.keep_done_hours == 0.0


def test_worker_processes_default_to_one_per_usable_core(tmp_path: Path) -> None:
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert parse_config(copy.deepcopy(GOOD), tmp_path).compression.processes == min(64, cores)
    data = copy.deepcopy(GOOD)
    _set(data, "compression.processes", "auto")
    assert parse_config(data, tmp_path).compression.processes == min(64, cores)
    _set(data, "compression.processes", 3)
    assert parse_config(data, tmp_path).compression.processes == 3
    _set(data, "compression.processes", 0)
    assert parse_config(data, tmp_path).compression.processes == 0


def test_processing_time_limit_defaults_to_ten_minutes(tmp_path: Path) -> None:
    assert parse_config(copy.deepcopy(GOOD), tmp_path).compression.timeout_seconds == 600.0
    data = copy.deepcopy(GOOD)
    _set(data, "compression.timeout_seconds", 45)
    assert parse_config(data, tmp_path).compression.timeout_seconds == 45.0


def test_private_version_defaults_to_2_and_reaches_the_encoder_options(tmp_path: Path) -> None:
    from gateway.codecs import private

    compression = parse_config(copy.deepcopy(GOOD), tmp_path).compression
    assert compression.private_version == PRIVATE_VERSION == 2
    assert compression.encode_options == {private.UID: {"version": 2}}
    for version in private.VERSIONS:
        data = copy.deepcopy(GOOD)
        _set(data, "compression.private_version", version)
        compression = parse_config(data, tmp_path).compression
        assert compression.private_version == version
        assert compression.encode_options == {private.UID: {"version": version}}


def test_shipped_default_documents_private_version(tmp_path: Path) -> None:
    """The commented line of config/gateway.toml, uncommented, is a valid setting of the default."""
    text = (REPO / "config" / "gateway.toml").read_text()
    [line] = [line for line in text.splitlines() if line.startswith("# private_version = ")]
    (tmp_path / "gateway.toml").write_text(text.replace(line, line[2:]).replace('"../', '"'))
    assert load_config(tmp_path / "gateway.toml").compression.private_version == PRIVATE_VERSION


def test_invalid_toml_and_missing_file_are_config_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[server\nport = 1\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "absent.toml")


def test_relative_paths_follow_the_config_file(tmp_path: Path) -> None:
    folder = tmp_path / "etc"
    folder.mkdir()
    (folder / "g.toml").write_text(
        '[spool]\ndirectory = "q"\n[[destinations]]\nname = "a"\nkind = "folder"\npath = "../out"\n')
    config = load_config(folder / "g.toml")
    assert config.spool.directory == folder / "q"
    assert config.destinations[0].path.resolve() == (tmp_path / "out").resolve()


@pytest.mark.parametrize(("section", "key", "bad"), [
    ("server", "max_associations", 0),
    ("compression", "rescan_seconds", 0),
    ("forwarding", "batch", 0),
    ("forwarding", "idle_release_seconds", -1),
    ("forwarding", "rescan_seconds", "soon"),
    ("forwarding", "unknown_knob", 1),
])
def test_limits_and_intervals_are_validated_settings(tmp_path: Path, section: str, key: str, bad) -> None:
    from gateway.config import parse_config

    data = {"destinations": [{"name": "local", "kind": "folder", "path": "archive"}], section: {key: bad}}
    with pytest.raises(ConfigError, match=f"{section}.{key}"):
        parse_config(data, tmp_path)


def test_settings_reach_the_parts_that_use_them(tmp_path: Path, gateway_factory) -> None:
    from tests.conftest import build_config

    config = build_config(tmp_path, server={"max_associations": 3},
                          forwarding={"batch": 7, "idle_release_seconds": 1.5, "rescan_seconds": 9})
    gateway = gateway_factory(config)
    assert gateway.server.ae.maximum_associations == 3
    forwarder = gateway.forwarders["local"][0]
    assert (forwarder.batch, forwarder.idle_seconds, forwarder.rescan_seconds) == (7, 1.5, 9)


_FOLDER = '[[destinations]]\nname = "a"\nkind = "folder"\npath = "archive"\n'


@pytest.mark.parametrize(("text", "words"), [
    (_FOLDER.encode() + "# Hôpital Saint-André\n".encode("latin-1"), "not valid UTF-8"),
    (_FOLDER.replace('"archive"', '"~no-such-user-here/archive"').encode(), "destinations[0].path: cannot expand"),
    (_FOLDER.replace('"archive"', '"arch\\u0000ive"').encode(), "destinations[0].path: must not contain a NUL"),
])
def test_a_file_that_cannot_be_decoded_or_expanded_is_a_config_error(tmp_path: Path, text: bytes,
                                                                     words: str) -> None:
    (tmp_path / "gateway.toml").write_bytes(text)
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "gateway.toml")
    assert words in str(info.value)


def test_a_config_path_that_is_a_folder_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "gateway.toml").mkdir()
    with pytest.raises(ConfigError, match="is a folder, not a file"):
        load_config(tmp_path / "gateway.toml")
    loop = tmp_path / "loop.toml"
    loop.symlink_to(loop)
    with pytest.raises(ConfigError, match="loop.toml"):
        load_config(loop)


@pytest.mark.parametrize(("url", "words"), [
    ("http://[fe80::1/dicom-web", "Invalid IPv6 URL"),
    ("http://127.0.0.1:99999/dicom-web", "out of range"),
    ("http://127.0.0.1:abc/dicom-web", "'abc'"),
    ("http://127.0.0.1:0/dicom-web", "the port must be 1..65535"),
])
def test_a_dicomweb_url_with_a_bad_host_or_port_names_the_key(tmp_path: Path, url: str, words: str) -> None:
    data = {"destinations": [{"name": "web", "kind": "dicomweb", "url": url}]}
    with pytest.raises(ConfigError) as info:
        parse_config(data, tmp_path)
    assert info.value.key == "destinations[0].url" and words in str(info.value)
    data["destinations"][0]["url"] = "http://[::1]:8042/dicom-web/"
    assert parse_config(data, tmp_path).destinations[0].url == "http://[::1]:8042/dicom-web"


def test_a_log_file_that_is_a_folder_names_the_key(tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir()
    data = {"destinations": [{"name": "a", "kind": "folder", "path": "archive"}], "logging": {"file": "logs"}}
    with pytest.raises(ConfigError) as info:
        parse_config(data, tmp_path)
    assert info.value.key == "logging.file" and "is a folder" in str(info.value)


def _web_tls(**web: object) -> dict:
    data = copy.deepcopy(GOOD)
    data["web"] = {"port": 8443, **web}
    return data


def test_the_console_certificate_and_key_are_checked_at_load(tmp_path: Path, pki: Path) -> None:  # noqa: F811
    """Both or neither, readable PEM, the key the certificate's: each refusal names its key, at load and not
    when uvicorn first reads them."""
    good = {"certificate": str(pki / "gateway.pem"), "private_key": str(pki / "gateway.key")}
    web = parse_config(_web_tls(**good), tmp_path).web
    assert web is not None and web.https and web.certificate == pki / "gateway.pem"
    (tmp_path / "web.pem").write_text("not a certificate\n")
    for given, key, words in (
        ({"certificate": good["certificate"]}, "web.private_key", "required with web.certificate"),
        ({"private_key": good["private_key"]}, "web.certificate", "required with web.private_key"),
        ({**good, "certificate": str(tmp_path / "missing.pem")}, "web.certificate", "cannot read"),
        ({**good, "certificate": str(tmp_path / "web.pem")}, "web.certificate", "holds no PEM certificate"),
        ({**good, "private_key": str(pki / "modality.key")}, "web.private_key", "cannot be used with"),
        ({**good, "certificate": 5}, "web.certificate", "must be a string"),
    ):
        with pytest.raises(ConfigError) as caught:
            parse_config(_web_tls(**given), tmp_path)
        assert caught.value.key == key and words in str(caught.value), (given, str(caught.value))
    assert parse_config(_web_tls(), tmp_path).web.https is False
