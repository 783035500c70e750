"""Signed images in 16-bit containers at the Bits Stored values the conformance sweep leaves out.

:mod:`tests.test_conformance_sweep` reads signed 16-bit images of Bits Stored 2, 5, 8, 12, 15 and 16
(its ``_MONO`` grid); here every other Bits Stored from 2 to 15 gets the same checks, on the same
frames (the most negative and the most positive value, full-range noise, a checkerboard of the two):
the decoders of other projects in process, and each command-line tool of the syntax on a DICOM file
pydicom wrote (or, for opj_decompress, on the codestream).  pydicom's plugins read the same images
through ``pixel_array`` in :mod:`tests.test_plugins`.

A tool whose limit, as the sweep records it, keeps it from reading any signed image is left out
rather than skipped: ojph_expand (OpenJPH 0.9.0) writes negative samples as 0 in its PGM and raw
files alike, where OpenJPEG (in process and opj_decompress) and imagecodecs' OpenJPH read the same
HTJ2K streams right.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.codecs import get_codec
from gateway.codecs.base import FrameInfo
from tests import test_conformance_sweep as sweep

pytestmark = pytest.mark.interop

_SWEPT = {stored for allocated, stored, signed in sweep._MONO if allocated == 16 and signed}
_INFOS = [(syntax, sweep._info(7, 13, 1, 16, stored, True)) for syntax in sweep._NAMES
          for stored in range(2, 16) if stored not in _SWEPT]
_INFOS = [(syntax, info) for syntax, info in _INFOS if get_codec(syntax).supports(info) is None]


def _id(syntax: str, info: FrameInfo) -> str:
    return f"{sweep._NAMES[syntax]}-16_{info.bits_stored}s"


def test_every_narrow_signed_precision_is_covered() -> None:
    covered = _SWEPT | {info.bits_stored for _, info in _INFOS}
    assert covered >= set(range(2, 16)), sorted(set(range(2, 16)) - covered)
    assert {syntax for syntax, _ in _INFOS} == set(sweep._NAMES)


@pytest.mark.parametrize(("syntax", "info"), [pytest.param(s, i, id=_id(s, i)) for s, i in _INFOS])
def test_other_decoders_read_narrow_signed_values(syntax: str, info: FrameInfo) -> None:
    sweep.test_other_decoders_read_our_codestreams(syntax, info)


@pytest.mark.filterwarnings("ignore:The number of bytes of compressed pixel data matches")
@pytest.mark.parametrize(("syntax", "info"), [pytest.param(s, i, id=_id(s, i)) for s, i in _INFOS])
def test_pydicom_plugins_read_narrow_signed_values_raw(syntax: str, info: FrameInfo) -> None:
    sweep.test_pydicom_plugins_read_our_datasets(syntax, info)


_TOOLS = [pytest.param(syntax, info, tool, id=f"{_id(syntax, info)}-{tool}") for syntax, info in _INFOS
          for tool in sweep._tools(syntax) if sweep._tool_limit(tool, syntax, info) is None]


def test_each_syntax_has_a_tool_for_signed_values() -> None:
    assert {p.values[0] for p in _TOOLS} == set(sweep._NAMES)


@pytest.mark.parametrize(("syntax", "info", "tool"), _TOOLS)
def test_archive_tools_read_narrow_signed_values(tmp_path: Path, syntax: str, info: FrameInfo, tool: str) -> None:
    sweep.test_archive_tools_read_our_files(tmp_path, syntax, info, tool)
