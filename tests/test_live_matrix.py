"""Every codec of the registry the ways a user runs it: ``serve``, ``compress``, pydicom's plugin.

For each registered codec, ``dicom-gateway serve`` runs as a subprocess with
its worker process; DCMTK's ``storescu`` sends real scanner images of several
kinds (16-bit signed CT, MR, 8-bit RGB ultrasound, a multi-frame object).
Each must arrive

* in a folder destination, in the codec's transfer syntax, and
* in a real Orthanc, in the first syntax of the destination's ladder that
  Orthanc itself says it accepts (it refuses our private syntax and, as the
  session's Orthanc is configured, the JPEG lossless family), after the
  gateway's verified fallback re-encode;

with pixels whose SHA-256 equals the corpus manifest's, a hash no code of
ours computed.  Each codec also goes through ``dicom-gateway compress`` in a
subprocess and through ``Dataset.compress(..., encoding_plugin="gateway")``
in a fresh interpreter that never imports gateway itself (the installed
hook provides the plugin); those use the corpus images where present and
pydicom's bundled ones otherwise.  A codec added to the registry joins the
matrix by itself.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from pydicom import Dataset, dcmread
from pydicom.pixels import pixel_array

from gateway.codecs import all_codecs
from gateway.dicom.uids import EXPLICIT_VR_LITTLE_ENDIAN, JPEG_LS_LOSSLESS, RLE_LOSSLESS, lookup
from tests.conftest import free_port, listening, start_serve, stop_process, wait_until
from tests.corpus import corpus_entries, needs_corpus
from tests.tools import require_dcmtk

# What the Orthanc destination is offered, best first: the codec's own syntax,
# then two standard fallbacks.
FALLBACKS = (JPEG_LS_LOSSLESS, RLE_LOSSLESS, EXPLICIT_VR_LITTLE_ENDIAN)

_KINDS = {
    "CT, 16-bit signed": lambda r: r["folder"] == "CT" and r["pixel_representation"] == "1"
    and r["bits_allocated"] == "16" and r["frames"] == "1",
    "MR": lambda r: r["folder"] == "MR" and r["frames"] == "1" and r["pixel_representation"] == "0",
    "US, 8-bit RGB": lambda r: r["folder"] == "US" and r["samples_per_pixel"] == "3" and r["frames"] == "1"
    and r["lossy_source"] == "False",
    "multi-frame": lambda r: int(r["frames"]) > 2 and r["samples_per_pixel"] == "1"
    and int(r["raw_pixel_bytes"]) < 8_000_000,
}


def _images() -> dict[str, dict]:
    chosen: dict[str, dict] = {}
    for kind, wanted in _KINDS.items():
        row = next((r for r in corpus_entries() if r["folder"] != "series" and wanted(r)), None)
        if row is None:
            pytest.fail(f"the corpus has no {kind} image")
        chosen[kind] = row
    return chosen


def _pixel_hash(ds: Dataset, syntax: str) -> str:
    """The manifest's hash definition; decoded by pydicom's plugins, ours only for our private syntax."""
    entry = lookup(syntax)
    plugin = "gateway" if entry is not None and entry.private else ("pylibjpeg" if entry.encapsulated else "")
    if plugin == "gateway":
        from gateway.plugins import register

        register()
    values = pixel_array(ds, decoding_plugin=plugin) if plugin else ds.pixel_array
    return hashlib.sha256(np.ascontiguousarray(values).tobytes()).hexdigest()


def _config(path: Path, port: int, codec_keyword: str, archive: Path, orthanc) -> None:
    ladder = ", ".join(f'"{uid}"' for uid in (codec_keyword, *FALLBACKS))
    path.write_text(f"""
[server]
ae_title = "GATEWAY"
host = "127.0.0.1"
port = {port}

[spool]
directory = "spool"

[compression]
transfer_syntax = "{codec_keyword}"
processes = 1
verify = true

[retry]
base_seconds = 0.2
cap_seconds = 1.0

[[destinations]]
name = "folder"
kind = "folder"
path = "{archive.name}"

[[destinations]]
name = "orthanc"
kind = "dicom"
ae_title = "{orthanc.aet}"
host = "127.0.0.1"
port = {orthanc.dicom_port}
transfer_syntaxes = [{ladder}]
""")


@pytest.fixture(scope="module")
def orthanc_accepts(orthanc_session) -> set[str]:
    """The transfer syntaxes Orthanc says it accepts (its own answer, not ours)."""
    return set(orthanc_session.get("/tools/accepted-transfer-syntaxes"))


@pytest.mark.interop
@pytest.mark.corpus
@needs_corpus
@pytest.mark.parametrize("codec", all_codecs(), ids=lambda c: c.name)
def test_codec_through_serve_to_folder_and_orthanc(codec, tmp_path: Path, orthanc, orthanc_accepts) -> None:
    storescu = require_dcmtk("storescu")
    images = _images()
    port = free_port()
    archive = tmp_path / "archive"
    config = tmp_path / "gateway.toml"
    _config(config, port, codec.keyword, archive, orthanc)
    log_path = tmp_path / "gateway.log"
    process = start_serve(config, log_path)
    try:
        assert wait_until(lambda: listening(port) or process.poll() is not None, timeout=180)
        assert process.poll() is None, log_path.read_text()[-3000:]
        files = [str(row["file"]) for row in images.values()]
        sent = subprocess.run([storescu, "-aet", "MODALITY", "-aec", "GATEWAY", "-R", "127.0.0.1", str(port),
                               *files], capture_output=True, text=True, timeout=120)
        assert sent.returncode == 0, sent.stdout + sent.stderr

        expected = {str(dcmread(row["file"], stop_before_pixels=True).SOPInstanceUID): (kind, row)
                    for kind, row in images.items()}
        assert wait_until(lambda: len(list(archive.rglob("*.dcm"))) == len(expected)
                          and len(orthanc.instances()) == len(expected), timeout=240), \
            log_path.read_text()[-4000:]
    finally:
        stop_process(process)
    log = log_path.read_text()
    assert process.returncode == 0, log[-3000:]
    assert "failed (attempt" not in log and "processing failed" not in log, log[-3000:]

    # (a) the folder: every image in the codec's own syntax, pixels as the manifest says.
    for path in archive.rglob("*.dcm"):
        ds = dcmread(path)
        kind, row = expected[str(ds.SOPInstanceUID)]
        assert ds.file_meta.TransferSyntaxUID == codec.uid, f"{kind}: stored as {ds.file_meta.TransferSyntaxUID}"
        assert _pixel_hash(ds, codec.uid) == row["sha256_of_pixel_array"], kind

    # (b) Orthanc: the best rung of the ladder it accepts, pixels as the manifest says.
    want = next(uid for uid in (codec.uid, *FALLBACKS) if uid in orthanc_accepts)
    for instance in orthanc.instances():
        ds = dcmread(BytesIO(orthanc.file(instance)))
        kind, row = expected[str(ds.SOPInstanceUID)]
        assert ds.file_meta.TransferSyntaxUID == want, f"{kind}: Orthanc got {ds.file_meta.TransferSyntaxUID}"
        assert _pixel_hash(ds, want) == row["sha256_of_pixel_array"], kind
    if want != codec.uid:
        assert f"destination=orthanc syntax={want}" in log


def test_the_matrix_covers_every_registered_codec() -> None:
    names = {codec.name for codec in all_codecs()}
    assert {"rle", "jpeg-lossless", "jpeg-ls", "gwl"} <= names


# ------------------------------------------------------------ compress, plugin

# pydicom's bundled images of the same kinds, where the corpus is absent.
_BUNDLED = {"CT, 16-bit signed": "CT_small.dcm", "MR": "MR_small.dcm", "US, 8-bit RGB": "examples_rgb_color.dcm",
            "multi-frame": "SC_rgb_rle_2frame.dcm"}


def _sources(folder: Path) -> dict[str, tuple[Path, str]]:
    """Per kind: an uncompressed file and the SHA-256 of its pixels (the manifest's, or pydicom's decode).

    pydicom's bundled RLE files are decompressed by pydicom into `folder` first, as the corpus is.
    """
    if corpus_entries():
        return {kind: (row["file"], row["sha256_of_pixel_array"]) for kind, row in _images().items()}
    from pydicom.data import get_testdata_file

    folder.mkdir(parents=True, exist_ok=True)
    sources = {}
    for kind, name in _BUNDLED.items():
        path = Path(get_testdata_file(name))
        ds = dcmread(path)
        digest = hashlib.sha256(np.ascontiguousarray(ds.pixel_array).tobytes()).hexdigest()
        if ds.file_meta.TransferSyntaxUID.is_compressed:
            ds.decompress(decoding_plugin="pydicom")
            path = folder / name
            ds.save_as(path, enforce_file_format=True)
        sources[kind] = (path, digest)
    return sources


def _command() -> list[str]:
    script = Path(sys.executable).parent / "dicom-gateway"
    return [str(script)] if script.exists() else [sys.executable, "-m", "gateway.cli"]


@pytest.mark.parametrize("codec", all_codecs(), ids=lambda c: c.name)
def test_codec_through_compress_command(codec, tmp_path: Path) -> None:
    sources = _sources(tmp_path / "sources")
    inputs = tmp_path / "in"
    inputs.mkdir()
    for kind, (path, _) in sources.items():
        (inputs / f"{kind.split(',')[0].replace(' ', '-')}.dcm").symlink_to(path)
    out = tmp_path / "out"
    result = subprocess.run([*_command(), "compress", "--transfer-syntax", codec.keyword, str(inputs), str(out)],
                            capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    for kind, (path, digest) in sources.items():
        ds = dcmread(out / f"{kind.split(',')[0].replace(' ', '-')}.dcm")
        assert ds.file_meta.TransferSyntaxUID == codec.uid, f"{kind}: {result.stdout}"
        assert _pixel_hash(ds, codec.uid) == digest, kind


_PLUGIN_PROGRAM = """
import hashlib, sys
import numpy as np
import pydicom
from pydicom.pixels import pixel_array
from pydicom.uid import UID
uid, plugin, *pairs = sys.argv[1:]
for source, target in zip(pairs[::2], pairs[1::2]):
    ds = pydicom.dcmread(source)
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        ds.decompress(decoding_plugin="pydicom")  # pydicom compresses native datasets only
    ds.compress(UID(uid), encoding_plugin="gateway")
    ds.save_as(target, enforce_file_format=True, implicit_vr=False, little_endian=True)
    back = pydicom.dcmread(target)
    values = pixel_array(back, decoding_plugin=plugin)
    print(back.file_meta.TransferSyntaxUID, hashlib.sha256(np.ascontiguousarray(values).tobytes()).hexdigest())
"""


@pytest.mark.parametrize("codec", all_codecs(), ids=lambda c: c.name)
def test_codec_through_pydicom_plugin_in_a_program_that_never_imports_gateway(codec, tmp_path: Path) -> None:
    # Our own decoder only where nobody else reads the syntax.
    plugin = "gateway" if codec.private else "pylibjpeg"
    env = {k: v for k, v in os.environ.items() if k != "DICOM_GATEWAY_NO_AUTOLOAD"}
    sources = _sources(tmp_path / "sources")
    pairs = [str(part) for kind, (path, _) in sources.items()
             for part in (path, tmp_path / f"{kind.split(',')[0].replace(' ', '-')}.dcm")]
    result = subprocess.run([sys.executable, "-c", _PLUGIN_PROGRAM, codec.uid, plugin, *pairs],
                            capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert len(lines) == len(sources), result.stdout
    for (kind, (_, digest)), line in zip(sources.items(), lines):
        assert line.split() == [codec.uid, digest], kind
