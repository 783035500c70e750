"""The operator's documents against the code: configuration keys and defaults, commands and flags, metrics.

An administrator does what README.md and docs/*.md say.  These tests read
those files as an operator would and check what they name exists and
behaves as written, so that a key, a default, a flag or a metric changed
in the code without its documentation fails here.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from gateway import config as cfg
from gateway.cli import build_parser, main

REPO = Path(__file__).resolve().parent.parent
DOCS = sorted((REPO / "docs").glob("*.md")) + [REPO / "README.md"]
OPERATIONS = REPO / "docs" / "operations.md"
MONITORING = REPO / "docs" / "monitoring.md"

# Dataclass fields that no TOML key sets: filled from other keys (allowed_callers' tables, [server.tls]).
_NOT_KEYS = {"ServerConfig": {"tls", "caller_certificates", "caller_addresses"}}

_SECTIONS: dict[str, type] = {
    "[server]": cfg.ServerConfig, "[server.tls]": cfg.ServerTls, "[spool]": cfg.SpoolConfig,
    "[compression]": cfg.CompressionConfig, "[web]": cfg.WebConfig, "[forwarding]": cfg.ForwardingConfig,
    "[retry]": cfg.RetryConfig, "[policy]": cfg.PolicyConfig, "[logging]": cfg.LoggingConfig,
    "[[destinations]]": cfg.Destination, "[[routes]]": cfg.Route,
}
_DESTINATION_KINDS = ("dicom", "dicomweb", "folder")


def _ticked(cell: str) -> list[str]:
    return re.findall(r"`([^`]*)`", cell)


def _config_table() -> list[tuple[str, str | None, list[str], list[str]]]:
    """(section, destination kind or None, keys, defaults) of each row of operations.md's configuration table."""
    text = OPERATIONS.read_text()
    start = text.index("| section | key | default | meaning |")
    rows = []
    section, kind = "", None
    for line in text[start:].splitlines()[2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        head = cells[0]
        if head in _DESTINATION_KINDS:
            section, kind = "[[destinations]]", head
        elif head:
            section, kind = head.strip("`"), None
        rows.append((section, kind, _ticked(cells[1]), _defaults(cells[2], len(_ticked(cells[1])))))
    return rows


def _defaults(cell: str, keys: int) -> list[str | None]:
    """The default of each key of a row: its ticked value, None where the cell says none, off or nothing.

    One default for several keys (`[]` for the three route filters) is each one's.
    """
    parts = re.split(r",\s+(?=(?:[^`]*`[^`]*`)*[^`]*$)", cell) if cell else []
    values = [(_ticked(part) or [None])[0] for part in parts]
    return values * keys if len(values) == 1 else values


def test_every_configuration_key_is_in_the_operations_table_and_every_documented_one_exists() -> None:
    documented: dict[str, set[str]] = {}
    for section, _kind, keys, _defaults in _config_table():
        if section == "[compression.modality]":
            documented.setdefault("[compression]", set()).add("modality")
            continue
        documented.setdefault(section, set()).update(keys)
    for section, klass in _SECTIONS.items():
        fields = {f.name for f in dataclasses.fields(klass)} - _NOT_KEYS.get(klass.__name__, set())
        assert fields - documented.get(section, set()) == set(), f"{section}: keys the operations table omits"
        assert documented.get(section, set()) - fields == set(), f"{section}: documented keys that do not exist"
    assert set(documented) == set(_SECTIONS), "sections of the table"


def _minimal(tmp_path: Path) -> dict[str, Any]:
    return {
        "spool": {}, "compression": {}, "retry": {}, "forwarding": {}, "policy": {}, "logging": {}, "web": {},
        "destinations": [
            {"name": "d", "kind": "dicom", "ae_title": "PACS", "host": "127.0.0.1", "port": 104},
            {"name": "w", "kind": "dicomweb", "url": "http://127.0.0.1:8042/dicom-web"},
            {"name": "f", "kind": "folder", "path": "archive"},
        ],
        "routes": [{"destinations": ["f"]}],
    }


def _documented_value(text: str) -> Any:
    if text == '"auto"':
        return cfg.available_cores()
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text  # a bare word: GATEWAY, keep, INFO, 127.0.0.1


def _same(documented: Any, actual: Any) -> bool:
    if isinstance(actual, tuple):
        actual = list(actual)
    if isinstance(actual, int) and not isinstance(actual, bool) and isinstance(documented, str) \
            and documented.isdigit():
        return int(documented, 8) == actual  # a mode: "0600"
    if isinstance(actual, Path):
        return Path(documented).name == actual.name
    return documented == actual and type(documented) is not bool or documented is actual


def test_the_defaults_in_the_operations_table_are_the_configurations(tmp_path: Path) -> None:
    config = cfg.parse_config(_minimal(tmp_path), tmp_path)
    objects: dict[tuple[str, str | None], Any] = {
        ("[server]", None): config.server, ("[spool]", None): config.spool,
        ("[compression]", None): config.compression, ("[web]", None): config.web,
        ("[forwarding]", None): config.forwarding, ("[retry]", None): config.retry,
        ("[policy]", None): config.policy, ("[logging]", None): config.logging,
        ("[[routes]]", None): config.routes[0],
        ("[server.tls]", None): cfg.ServerTls(certificate=Path("c"), private_key=Path("k")),
        **{("[[destinations]]", d.kind): d for d in config.destinations},
    }
    checked = 0
    for section, kind, keys, defaults in _config_table():
        if len(keys) != len(defaults) or (section, kind) not in objects:
            continue  # no default (required) or a row of its own form
        for key, default in zip(keys, defaults):
            if default is None:
                continue  # "off", none, the system's CAs
            actual = getattr(objects[section, kind], key)
            assert _same(_documented_value(default), actual), f"{section} {kind or ''} {key}: documented " \
                                                              f"{default}, is {actual!r}"
            checked += 1
    assert checked >= 50


def _doc_commands() -> list[tuple[Path, str]]:
    """Every ``dicom-gateway ...`` command line the documents show, in code spans and code blocks."""
    found = []
    for path in DOCS:
        text = path.read_text()
        spans = [" ".join(span.split()) for span in re.findall(r"`(dicom-gateway\s[^`]+)`", text)]
        fence: str | None = None  # the language of the code block the line is in, None outside one
        for line in text.splitlines():
            if line.startswith("```"):
                fence = line[3:].strip() if fence is None else None
                continue
            at = line.find("dicom-gateway ")
            if fence in ("", "sh", "bash") and at >= 0 and not line[:at].strip().endswith(("/", "=")):
                spans.append(line[at:].split("#")[0])
        found += [(path, span) for span in spans]
    return found


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_command_and_flag_the_documents_show_exists() -> None:
    commands = _subcommands()
    lines = _doc_commands()
    assert len(lines) >= 15
    for path, line in lines:
        words = line.split()
        name = words[1]
        if not re.fullmatch(r"[a-z][a-z-]*", name):
            continue  # `dicom-gateway <cmd>`, a placeholder
        assert name in commands, f"{path.name}: {line!r}: no command {name!r}"
        options = {s for a in commands[name]._actions for s in a.option_strings}
        for word in words[2:]:
            flag = word.split("=")[0]
            if flag.startswith("--"):
                assert flag in options, f"{path.name}: {line!r}: {name} has no {flag}"


def test_check_config_takes_the_file_as_every_other_command_does(capsys) -> None:
    shipped = str(REPO / "config" / "gateway.toml")
    assert main(["check-config", "--config", shipped]) == 0
    assert "GATEWAY@127.0.0.1:11112" in capsys.readouterr().out
    assert main(["check-config", shipped]) == 0


def _metric_table() -> dict[str, str]:
    text = MONITORING.read_text()
    return {m.group(1): m.group(2) for m in re.finditer(r"^\| `(dicom_gateway_\w+)` \| (\w+) \|", text, re.M)}


def _exported(tmp_path: Path) -> dict[str, str]:
    from gateway.metrics import GatewayCollector
    from gateway.record import ProofRecord
    from gateway.spool import Spool

    spool = Spool(tmp_path / "spool")
    ProofRecord(tmp_path / "spool" / "record.sqlite").close()
    registry = CollectorRegistry()
    registry.register(GatewayCollector(tmp_path / "spool" / "record.sqlite", spool, lambda: ["local"]))
    text = generate_latest(registry).decode()
    return dict(re.findall(r"^# TYPE (\w+) (\w+)$", text, re.M))


def test_every_documented_metric_is_exported_with_its_type_and_every_exported_one_documented(tmp_path: Path) -> None:
    documented, exported = _metric_table(), _exported(tmp_path)
    assert documented == exported
    rules = MONITORING.read_text().split("## Alert rules", 1)[1]
    for name in set(re.findall(r"\b(dicom_gateway_\w+)", rules)):
        assert name in exported, f"an alert rule names {name}, which is not exported"


@pytest.mark.parametrize("word", ["server", "server_ca", "destination", "destination_ca", "web"])
def test_every_use_of_a_certificate_is_in_the_expiry_gauges_row(word: str) -> None:
    row = next(line for line in MONITORING.read_text().splitlines()
               if line.startswith("| `dicom_gateway_tls_certificate_expiry_timestamp_seconds`"))
    assert re.search(rf"`{word}( <name>)?`", row), f"use={word!r} is not documented"


def test_retry_says_when_a_running_gateway_takes_up_what_no_route_matched(tmp_path: Path, capsys) -> None:
    """`retry` said "within 30 s" for every dead letter; one no route matched goes back through the worker,
    whose rescan took it 87 s later (three [compression] rescan_seconds at most), as operations.md says."""
    from gateway.dicom.identity import Identity
    from gateway.spool import DEAD, UNROUTED, Job, Spool

    config = tmp_path / "g.toml"
    config.write_text('[spool]\ndirectory = "spool"\n[[destinations]]\nname = "f"\nkind = "folder"\npath = "a"\n')
    spool = Spool(tmp_path / "spool")
    spool.add_jobs([Job("i1", UNROUTED, state=DEAD, reason="no route matches ...",
                        identity=Identity(sop_instance_uid="1.2.3.4")),
                    Job("i2", "f", state=DEAD, reason="gave up", identity=Identity(sop_instance_uid="1.2.3.5"))])
    assert main(["retry", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "re-queued 2 dead letter(s)" in out and "within 30 s" in out and "the 1 no route matched within 90 s" in out
    text = " ".join(OPERATIONS.read_text().split())
    assert "three `[compression] rescan_seconds`" in text


def test_the_pass_through_reasons_monitoring_names_are_labels_the_counter_has() -> None:
    from gateway.record import REASON_CLASSES

    row = next(line for line in MONITORING.read_text().splitlines()
               if line.startswith("| `dicom_gateway_passed_through_total`"))
    named = set(re.findall(r"`([a-z_]+)`", row.split("|")[4]))
    assert named and named <= {label for _needle, label in REASON_CLASSES} | {"other"}


def _row(key: str, kind: str | None = None) -> str:
    """The text of operations.md's configuration row for `key` (under destination `kind`, if given)."""
    text = OPERATIONS.read_text()
    table = text[text.index("| section | key | default | meaning |"):].split("\n\n", 1)[0]
    current = None
    for line in table.splitlines():
        head = line.strip("|").split("|")[0].strip()
        current = head if head in _DESTINATION_KINDS else (None if head else current)
        if f"| `{key}` |" in line and (kind is None or current == kind):
            return line
    raise AssertionError(f"no row for {key}")


def test_the_keys_of_inline_tables_are_in_their_rows() -> None:
    """allowed_callers' tables, a DICOM destination's tls and a DICOMweb destination's auth take keys of their
    own; the table named certificate_subject but not addresses."""
    assert {"ae_title", "certificate_subject", "addresses"} <= set(re.findall(r"(\w+) =", _row("allowed_callers")))
    tls = _row("tls", "dicom")
    assert all(f.name in tls for f in dataclasses.fields(cfg.DestinationTls))
    auth = _row("auth", "dicomweb")
    assert all(f"{key} =" in auth for key in ("kind", "username", "password_file", "token_file"))


def test_the_defaults_of_network_md_bounds_table_are_the_receivers() -> None:
    text = (REPO / "docs" / "network.md").read_text()
    table = text[text.index("| key | default | bound |"):].split("\n\n", 1)[0]
    rows = re.findall(r"^\| `(\w+)` \| `([^`]+)` \|", table, re.M)
    assert len(rows) >= 6
    for key, default in rows:
        assert getattr(cfg.ServerConfig(), key) == _documented_value(default), key
