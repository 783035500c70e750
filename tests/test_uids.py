"""The transfer syntax table: facts of PS3.6, and answers that never depend on pydicom's registrations."""

from __future__ import annotations

import os
import subprocess
import sys

import pydicom.uid
import pytest

from gateway.dicom import uids
from gateway.dicom.uids import TRANSFER_SYNTAXES
from tests.conftest import REPO

_STANDARD = [entry for entry in TRANSFER_SYNTAXES.values() if not entry.private]


@pytest.mark.parametrize("entry", _STANDARD, ids=lambda e: e.keyword)
def test_standard_entries_agree_with_pydicom(entry) -> None:
    """pydicom's own table is a second source for the syntaxes it knows."""
    known = pydicom.uid.UID(entry.uid)
    if not known.is_transfer_syntax:
        pytest.skip(f"pydicom {pydicom.__version__} does not know {entry.uid}")
    assert known.name == entry.name or known.keyword == entry.keyword
    assert known.is_encapsulated == entry.encapsulated
    assert known.is_implicit_VR == entry.implicit_vr
    assert known.is_little_endian == entry.little_endian
    if entry.keyword not in _DEFLATED_DATASET_PYDICOM_MISSES:
        assert known.is_deflated == entry.deflated


# PS3.5 Annex A: the JPIP Referenced Deflate syntaxes deflate the data set
# like 1.2.840.10008.1.2.1.99; pydicom 3.0 counts only the latter as deflated.
_DEFLATED_DATASET_PYDICOM_MISSES = {"JPIPReferencedDeflate", "JPIPHTJ2KReferencedDeflate"}


def test_every_transfer_syntax_pydicom_names_is_in_the_table() -> None:
    missing = [name for name in dir(pydicom.uid)
               if isinstance(getattr(pydicom.uid, name), pydicom.uid.UID)
               and getattr(pydicom.uid, name).is_transfer_syntax
               and str(getattr(pydicom.uid, name)) not in TRANSFER_SYNTAXES]
    assert missing == []


@pytest.mark.parametrize(("uid", "explicit_le"), [
    ("1.2.840.10008.1.2.1", True),
    ("1.2.840.10008.1.2", False),
    ("1.2.840.10008.1.2.2", False),
    ("1.2.840.10008.1.2.1.99", False),
    ("1.2.840.10008.1.2.4.80", True),
    (uids.GATEWAY_LOSSLESS_V1, True),
    ("1.2.3.4", False),  # unknown: not walked as explicit little endian
])
def test_explicit_little_endian(uid: str, explicit_le: bool) -> None:
    assert uids.is_explicit_little_endian(uid) is explicit_le


def test_unknown_syntax_counts_as_encapsulated_and_not_lossless() -> None:
    assert uids.is_encapsulated("1.2.3.4")
    assert not uids.is_lossless("1.2.3.4")
    assert uids.lookup("1.2.3.4") is None


def test_private_syntax_by_keyword() -> None:
    entry = uids.lookup("GatewayLosslessV1")
    assert entry is not None and entry.private and entry.encapsulated and entry.lossless


def test_answers_in_a_process_where_nothing_registered_our_syntax() -> None:
    """The worker processes' situation: pydicom loaded, our syntax never registered with it."""
    code = (
        "import pydicom.uid, gateway.dicom.uids as u\n"
        f"assert not pydicom.uid.UID({uids.GATEWAY_LOSSLESS_V1!r}).is_transfer_syntax\n"
        f"assert u.is_explicit_little_endian({uids.GATEWAY_LOSSLESS_V1!r})\n"
        f"assert u.is_encapsulated({uids.GATEWAY_LOSSLESS_V1!r})\n"
        "print('ok')\n"
    )
    env = dict(os.environ, DICOM_GATEWAY_NO_AUTOLOAD="1")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=env,
                            timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
