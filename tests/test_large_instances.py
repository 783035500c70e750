"""Large, legitimate instances are recompressed within a few frames' worth of memory beside their output.

A breast tomosynthesis, an enhanced multi-frame CT or an ultrasound cine
loop is hundreds to thousands of frames, 0.5 to 2 GB.  Each test here
processes a smaller instance of the same shape (its Pixel Data above the
size the worker leaves in the file) and measures the peak of what Python
allocated (tracemalloc: numpy's arrays are counted too) against the size of
the pixel data: a path that holds the whole image, or a second copy of its
encoded form, shows up as a peak of that size.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless, generate_uid

ROWS = COLUMNS = 512
FRAMES = 48
PIXEL_BYTES = ROWS * COLUMNS * 2 * FRAMES  # 24 MiB: above the 8 MiB the worker leaves in the file


def smooth_frames(frames: int = FRAMES) -> np.ndarray:
    """12-bit frames of gentle gradients that drift from frame to frame: every codec shrinks them many times."""
    y, x = np.mgrid[0:ROWS, 0:COLUMNS]
    return np.stack([((x + y + 3 * index) // 8 + 500).astype(np.uint16) for index in range(frames)])


def write_instance(path: Path, pixels: np.ndarray, syntax: str = ExplicitVRLittleEndian, bits_stored: int = 12) -> Path:
    """A multi-frame CT-like object of `pixels` (frames, rows, columns) in native `syntax`."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"  # Enhanced CT
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = generate_uid(), generate_uid(), "CT"
    ds.PatientName, ds.PatientID = "LARGE^INSTANCE", "L1"
    ds.Rows, ds.Columns, ds.NumberOfFrames = pixels.shape[1], pixels.shape[2], pixels.shape[0]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits_stored, bits_stored - 1, 0
    ds.PixelData = pixels.astype("<u2").tobytes()
    ds.save_as(path, implicit_vr=syntax == ImplicitVRLittleEndian, little_endian=True, enforce_file_format=True)
    return path


def traced_peak(work: Callable[[], Any]) -> tuple[Any, int]:
    """What `work` returns and the peak of memory allocated while it ran, beyond what was allocated before."""
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        result = work()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak - base


def _process(tmp_path: Path, source: Path, target: str) -> tuple[Path, int]:
    """Store `source` in a spool and process it as the worker does; the processed object and the peak."""
    from gateway.spool import Spool
    from gateway.warmup import configured_syntaxes, warm_up
    from gateway.worker import process_instance
    from tests.conftest import build_config

    config = build_config(tmp_path, compression={"transfer_syntax": target})
    warm_up(configured_syntaxes(config, forwarding=False))  # the kernels' loading is no part of the peak
    spool = Spool(config.spool.directory)
    # Nor is what the first instance loads (the verifying decoders' modules): a small one goes first.
    small = write_instance(tmp_path / "small.dcm", smooth_frames(2))
    assert process_instance(config, spool, spool.store_received(small, "MODALITY"))
    ident = spool.store_received(source, "MODALITY")
    jobs, peak = traced_peak(lambda: process_instance(config, spool, ident))
    assert jobs and jobs[0].identity.transfer_syntax == target, "recompressed, or the peak means nothing"
    return spool.object_path(ident), peak


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian], ids=["explicit", "implicit"])
def test_the_worker_never_reads_a_large_native_pixel_data_whole(tmp_path: Path, syntax: str) -> None:
    """Frames are read from the file one at a time: nothing may read the whole value besides.

    The check for an icon in a sequence read every top-level element, Pixel
    Data too, and a copy of an implicit VR dataset read it for its memo: the
    whole image stayed in memory until the instance was done.
    """
    pixels = smooth_frames()
    source = write_instance(tmp_path / "large.dcm", pixels, syntax)
    stored, peak = _process(tmp_path, source, RLELossless)
    assert peak < PIXEL_BYTES // 3, f"{peak} bytes allocated at the peak for {PIXEL_BYTES} bytes of pixels"
    assert np.array_equal(dcmread(stored).pixel_array, pixels)


def noisy_frames(frames: int, rows: int, columns: int, sigma: float, seed: int = 7) -> np.ndarray:
    """12-bit frames of a drifting gradient with Gaussian noise of `sigma`: the noise decides how well they shrink."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:rows, 0:columns]
    return np.stack([np.clip((x + y + 3 * index) // 8 + 500 + rng.normal(0, sigma, (rows, columns)), 0, 4095)
                     .astype(np.uint16) for index in range(frames)])


def _in_memory(tmp_path: Path, pixels: np.ndarray, bits_stored: int = 12) -> Dataset:
    """The instance of `pixels` read whole, as the worker reads a small file: its frames are views of the value."""
    return dcmread(write_instance(tmp_path / "instance.dcm", pixels, bits_stored=bits_stored))


def test_inter_frame_streams_are_never_held_as_a_list_beside_the_value(tmp_path: Path) -> None:
    """Our private codec codes the frames of an image together: its streams were all returned as a list and
    only then copied into the Pixel Data value, so that the encoded image was held twice at the peak."""
    from gateway.codecs import private
    from gateway.pipeline import recompress

    pixels = noisy_frames(128, 256, 256, sigma=20.0)
    ds = _in_memory(tmp_path, pixels)
    recompress(_in_memory(tmp_path, pixels[:2]), private.UID)  # the kernels' loading is no part of the peak
    outcome, peak = traced_peak(lambda: recompress(ds, private.UID))
    assert outcome.recompressed, outcome.reason
    encoded, frame = outcome.encoded_pixel_bytes, pixels[0].nbytes
    assert encoded > 32 * frame, "the encoded image must outweigh the frames in hand for the bound to mean anything"
    assert peak < encoded + 16 * frame, f"{peak} bytes at the peak for {encoded} bytes encoded"


def test_an_encoding_that_would_not_shrink_is_dropped_without_a_copy(tmp_path: Path) -> None:
    """An encoding stopped once it reached the received size was finished all the same (its offset table
    rewritten): two more copies of an image as large as the original, only to be dropped."""
    from gateway.pipeline import recompress

    rng = np.random.default_rng(5)
    # 16-bit noise: RLE grows each frame a little (literal runs, its header), so that the encoding reaches the
    # received size a few frames before the last one.
    pixels = rng.integers(0, 1 << 16, (400, 64, 64), dtype=np.uint16)
    ds = _in_memory(tmp_path, pixels, bits_stored=16)
    recompress(_in_memory(tmp_path, pixels[:2], bits_stored=16), RLELossless)
    outcome, peak = traced_peak(lambda: recompress(ds, RLELossless, allow_larger=False))
    assert not outcome.recompressed and "would not shrink" in str(outcome.reason)
    assert outcome.dataset is ds
    size = pixels.nbytes
    assert peak < 1.5 * size, f"{peak} bytes at the peak for {size} bytes of pixels"


def test_decoding_to_a_native_syntax_writes_the_frames_into_one_value(tmp_path: Path) -> None:
    """Frames written native were each copied to bytes, then joined (and padded) into the value: the image
    held twice over at the end.  A destination that takes nothing compressed gets large images too."""
    from gateway.pipeline import recompress

    pixels = noisy_frames(48, 256, 256, sigma=4.0)
    ds = _in_memory(tmp_path, pixels)
    outcome, peak = traced_peak(lambda: recompress(ds, ImplicitVRLittleEndian))
    assert outcome.recompressed, outcome.reason
    assert outcome.dataset.PixelData == pixels.astype("<u2").tobytes()
    size = pixels.nbytes
    assert peak < 1.5 * size, f"{peak} bytes at the peak for {size} bytes of pixels"


@pytest.mark.parametrize("layout", ["relative", "uid"])
def test_compress_reads_a_large_image_frame_by_frame_and_writes_it_straight_to_its_file(tmp_path: Path,
                                                                                         layout: str) -> None:
    """``dicom-gateway compress`` read each input whole (the image in memory beside its frames) and built its
    output as bytes (a second copy of the encoded image) before writing them."""
    import hashlib

    from gateway.bulk.task import compress_file

    inputs, output = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    pixels = smooth_frames()
    write_instance(inputs / "large.dcm", pixels)
    write_instance(inputs / "small.dcm", smooth_frames(2))
    assert compress_file(str(inputs), str(output), "small.dcm", RLELossless, layout=layout)["outcome"] == "recompressed"
    result, peak = traced_peak(lambda: compress_file(str(inputs), str(output), "large.dcm", RLELossless, layout=layout))
    assert result["outcome"] == "recompressed", result["reason"]
    assert peak < PIXEL_BYTES // 3, f"{peak} bytes allocated at the peak for {PIXEL_BYTES} bytes of pixels"
    written = output / result["output"]
    assert written.stat().st_size == result["output_size"]
    assert hashlib.sha256(written.read_bytes()).hexdigest() == result["output_sha256"]
    assert np.array_equal(dcmread(written).pixel_array, pixels)
    assert sorted(p.name for p in written.parent.iterdir() if p.name.endswith(".tmp")) == []


def test_compress_of_one_file_reads_and_writes_it_as_a_folders_files_are(tmp_path: Path) -> None:
    """``dicom-gateway compress IN.dcm OUT.dcm`` read the input whole and built its output as bytes: a 1 GB
    image took 2.25 GB, where a folder of the same file takes 233 MB."""
    from gateway.cli import main

    source, small = tmp_path / "large.dcm", tmp_path / "small.dcm"
    pixels = smooth_frames()
    write_instance(source, pixels)
    write_instance(small, smooth_frames(2))
    assert main(["compress", str(small), str(tmp_path / "out" / "small.dcm"), "--transfer-syntax", "rle"]) == 0  # kernels loaded
    output = tmp_path / "out" / "large.dcm"
    status, peak = traced_peak(lambda: main(["compress", str(source), str(output), "--transfer-syntax", "rle"]))
    assert status == 0
    assert peak < PIXEL_BYTES // 3, f"{peak} bytes allocated at the peak for {PIXEL_BYTES} bytes of pixels"
    written = dcmread(output)
    assert written.file_meta.TransferSyntaxUID == RLELossless and np.array_equal(written.pixel_array, pixels)
    assert oct(output.stat().st_mode & 0o777) == "0o600"
    assert sorted(p.name for p in output.parent.iterdir()) == ["large.dcm", "small.dcm"], "no partial file left"


def test_an_object_written_from_its_whole_dataset_holds_its_pixel_data_once(tmp_path: Path) -> None:
    """An instance received implicit VR is written from its re-encoded dataset (``dcmwrite``, or a buffer to
    add its group lengths back): each wrote the new Pixel Data into a buffer of its own first, a second copy
    of the encoded image."""
    from pydicom.uid import JPEGLSLossless

    pixels = noisy_frames(48, 512, 512, sigma=20.0)
    source = write_instance(tmp_path / "implicit.dcm", pixels, ImplicitVRLittleEndian)
    stored, peak = _process(tmp_path, source, JPEGLSLossless)
    encoded = len(dcmread(stored).PixelData)
    assert encoded > PIXEL_BYTES // 4, "the encoded image must outweigh the frames in hand for the bound to mean anything"
    assert peak < 1.5 * encoded, f"{peak} bytes at the peak for {encoded} bytes encoded"
    assert np.array_equal(dcmread(stored).pixel_array, pixels)


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless])
def test_a_dataset_written_around_its_pixel_data_is_what_dcmwrite_writes(tmp_path: Path, syntax: str) -> None:
    import io

    from pydicom.filewriter import dcmwrite

    from gateway.dicom.splice import write_dataset
    from gateway.pipeline import recompress

    pixels = noisy_frames(3, 64, 64, sigma=3.0)
    ds = _in_memory(tmp_path, pixels)
    ds.add_new(0x00090010, "LO", "GATEWAY TEST")  # a private block and a trailing padding element after Pixel Data
    ds.add_new(0x00091001, "OB", b"\x01\x02")
    ds.add_new(0xFFFCFFFC, "OB", b"\x00" * 4)
    if syntax != ExplicitVRLittleEndian:
        outcome = recompress(ds, syntax)
        assert outcome.recompressed, outcome.reason
        ds = outcome.dataset
    expected, written = io.BytesIO(), io.BytesIO()
    dcmwrite(expected, ds, enforce_file_format=True)
    write_dataset(written, ds)
    assert written.getvalue() == expected.getvalue()


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian], ids=["explicit", "implicit"])
def test_a_large_encoded_value_is_kept_in_the_spool_not_in_memory(tmp_path: Path, monkeypatch, syntax: str) -> None:
    """The encoded Pixel Data was built in memory whole: a worker grew by the size of its output (a 1 GB CT
    to RLE: 520 MB), times the worker processes.  Past a bound it now moves to a file in the spool's temp
    folder, and the object written is byte for byte the one written from memory."""
    from pydicom.uid import JPEGLSLossless

    import gateway.pipeline.policy as policy
    from gateway.dicom.splice import written_bytes
    from gateway.pipeline import recompress

    monkeypatch.setattr(policy, "SPILL_BYTES", 1 << 20, raising=False)  # 1 MiB: this image's value moves
    pixels = noisy_frames(48, 512, 512, sigma=20.0)
    source = write_instance(tmp_path / "large.dcm", pixels, syntax)
    stored, peak = _process(tmp_path, source, JPEGLSLossless)
    written = stored.read_bytes()
    encoded = len(dcmread(stored).PixelData)
    assert encoded > PIXEL_BYTES // 4, "the encoded image must outweigh the frames in hand for the bound to mean anything"
    assert peak < encoded // 2, f"{peak} bytes at the peak for {encoded} bytes encoded"
    whole = dcmread(source)
    in_memory = recompress(whole, JPEGLSLossless, allow_larger=False)
    assert isinstance(in_memory.dataset.PixelData, bytes)
    assert written == written_bytes(source, whole, in_memory.dataset)
    assert list((tmp_path / "spool" / "tmp").iterdir()) == [], "nothing is left in the spool's temp folder"


@pytest.mark.parametrize("written", [3, 2], ids=["every frame", "fewer codestreams than frames"])
def test_a_value_kept_in_a_file_is_what_encapsulate_writes(tmp_path: Path, monkeypatch, written: int) -> None:
    from pydicom.encaps import encapsulate

    import gateway.pipeline.policy as policy

    monkeypatch.setattr(policy, "SPILL_BYTES", 16)
    streams = [b"\x01" * 11, b"\x02" * 30, b"\x03" * 7][:written]
    encapsulation = policy._Encapsulation(3, scratch=tmp_path)
    for stream in streams:
        encapsulation.add(stream)
    value, extended = encapsulation.finish()
    assert not isinstance(value, bytes), "moved to a file"
    with value:
        assert value.read() == encapsulate(streams, has_bot=True) and extended is None
    assert list(tmp_path.iterdir()) == [], "the file is anonymous"
