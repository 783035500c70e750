"""``allowed_callers`` entries that bind a calling AE title to the addresses it may call from."""

from __future__ import annotations

from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from gateway.config import ConfigError, load_config
from tests.conftest import free_port


def _toml(tmp_path: Path, callers: str, port: int) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(f'[server]\nport = {port}\nallowed_callers = {callers}\n[spool]\ndirectory = "spool"\n'
                    '[compression]\nprocesses = 0\n[[destinations]]\nname = "local"\nkind = "folder"\n'
                    'path = "archive"\n')
    return path


def _echo(port: int, calling: str, source: str) -> bool:
    """A C-ECHO as `calling` from the loopback address `source`: True when associated and answered."""
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = 10
    assoc = ae.associate("127.0.0.1", port, ae_title="GATEWAY", bind_address=(source, 0))
    if not assoc.is_established:
        return False
    try:
        status = assoc.send_c_echo()
        return bool(status) and status.Status == 0x0000
    finally:
        assoc.release()


def test_an_address_bound_title_gets_in_only_from_its_addresses_and_a_reload_moves_them(tmp_path: Path,
                                                                                       gateway_factory,
                                                                                       caplog) -> None:
    port = free_port()
    toml = _toml(tmp_path, '["US1", { ae_title = "CT1", addresses = ["127.0.0.2"] }]', port)
    gateway = gateway_factory(load_config(toml))
    assert _echo(port, "CT1", "127.0.0.2")
    assert not _echo(port, "CT1", "127.0.0.1"), "the title alone, from another address"
    assert "calling=CT1 from 127.0.0.1" in caplog.text and "not an address allowed_callers binds" in caplog.text
    assert _echo(port, "US1", "127.0.0.1"), "a title bound to nothing comes from anywhere"
    assert not _echo(port, "MR1", "127.0.0.2"), "a title not listed at all"

    _toml(tmp_path, '["US1", { ae_title = "CT1", addresses = ["127.0.0.0/30"] }, '
                    '{ ae_title = "CT1", addresses = ["::1"] }]', port)
    assert gateway.reload() is None
    assert _echo(port, "CT1", "127.0.0.1") and _echo(port, "CT1", "127.0.0.2")
    assert not _echo(port, "CT1", "127.0.0.5")


@pytest.mark.parametrize("callers, key", [
    ('[{ ae_title = "CT1", addresses = ["10.0.0.300"] }]', "server.allowed_callers[0].addresses[0]"),
    ('[{ ae_title = "CT1", addresses = [] }]', "server.allowed_callers[0].addresses"),
    ('[{ ae_title = "CT1", addresses = "10.0.0.1" }]', "server.allowed_callers[0].addresses"),
    ('[{ ae_title = "CT1" }]', "server.allowed_callers[0].certificate_subject"),
    ('[{ ae_title = "CT1", address = ["10.0.0.1"] }]', "server.allowed_callers[0].address"),
])
def test_bad_address_bindings_name_their_key(tmp_path: Path, callers: str, key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(_toml(tmp_path, callers, free_port()))
    assert str(caught.value).startswith(key), str(caught.value)


def test_check_config_shows_where_a_title_may_call_from(tmp_path: Path, capsys) -> None:
    from gateway.cli import main

    toml = _toml(tmp_path, '[{ ae_title = "CT1", addresses = ["10.1.8.7/24", "fe80::1"] }]', free_port())
    assert main(["check-config", str(toml)]) == 0
    assert "caller  CT1 only from 10.1.8.0/24, fe80::1/128" in capsys.readouterr().out


def test_the_console_shows_where_a_title_may_call_from(tmp_path: Path, gateway_factory) -> None:
    from tests.test_console import request

    toml = _toml(tmp_path, '[{ ae_title = "CT1", addresses = ["127.0.0.2", "10.1.8.0/24"] }]', free_port())
    with toml.open("a") as handle:
        handle.write(f"[web]\nport = {free_port()}\n")
    gateway = gateway_factory(load_config(toml))
    status, _, html = request(gateway.web.port, "GET", "/config")
    assert status == 200
    assert "<dt>CT1 calls from</dt><dd>127.0.0.2/32, 10.1.8.0/24</dd>" in html
