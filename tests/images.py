"""Generated reference images with coded ids, for every codec's tests.

An id reads ``<kind>_<bits allocated>_<bits stored>_<samples>_<signed>_<frames>F_<rows>x<cols>``,
e.g. ``noise_16_16_1_s_1F_33x17``.  Each entry is ``(id, FrameInfo, frames)``.
"""

from __future__ import annotations

import numpy as np
import pytest
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from gateway.codecs.base import FrameInfo


def enlarge(image: np.ndarray, axis: int, cubic: bool = False) -> np.ndarray:
    """`image` (int64) with a sample put between every two neighbours along `axis`, as scanners
    and workstations enlarge images: the floor of the mean of the two, or with `cubic` the cubic
    (Catmull-Rom) midpoint ``(-a + 9b + 9c - d) / 16`` rounded half up, the edge samples repeated."""
    moved = np.moveaxis(np.asarray(image, np.int64), axis, 0)
    wider = np.empty((2 * moved.shape[0] - 1,) + moved.shape[1:], np.int64)
    wider[0::2] = moved
    if cubic:
        padded = np.concatenate([moved[:1], moved, moved[-1:]])
        wider[1::2] = np.floor((-padded[:-3] + 9 * padded[1:-2] + 9 * padded[2:-1] - padded[3:]) / 16 + 0.5)
    else:
        wider[1::2] = (moved[:-1] + moved[1:]) >> 1
    return np.moveaxis(wider, 0, axis)


def _info(rows, cols, samples, alloc, stored, signed) -> FrameInfo:
    return FrameInfo(
        rows=rows,
        columns=cols,
        samples_per_pixel=samples,
        bits_allocated=alloc,
        bits_stored=stored,
        pixel_representation=int(signed),
        photometric_interpretation="RGB" if samples == 3 else "MONOCHROME2",
    )


def _noise(rng, info: FrameInfo) -> np.ndarray:
    low, high = info.value_range
    return rng.integers(low, high, size=info.shape, endpoint=True).astype(info.dtype)


def _smooth(rng, info: FrameInfo) -> np.ndarray:
    """A smooth ramp with mild noise and a flat border: a stand-in for anatomy."""
    low, high = info.value_range
    rows, cols = info.rows, info.columns
    y, x = np.mgrid[0:rows, 0:cols]
    base = (np.sin(y / 7.0) + np.cos(x / 11.0) + 2.0) / 4.0
    values = low + base * (high - low) * 0.8 + rng.normal(0, max(1.0, (high - low) / 500), (rows, cols))
    values[: rows // 8, :] = low
    if info.samples_per_pixel == 3:
        values = np.stack([values, values * 0.9 + low * 0.1, values[::-1, :]], axis=-1)
    return np.clip(np.rint(values), low, high).astype(info.dtype)


def _build() -> list[tuple[str, FrameInfo, list[np.ndarray]]]:
    rng = np.random.default_rng(20261124)
    images = []

    def add(kind, rows, cols, samples, alloc, stored, signed, frames, maker):
        info = _info(rows, cols, samples, alloc, stored, signed)
        sign = "s" if signed else "u"
        ident = f"{kind}_{alloc}_{stored}_{samples}_{sign}_{frames}F_{rows}x{cols}"
        images.append((ident, info, [maker(info) for _ in range(frames)]))

    const = lambda value: (lambda info: np.full(info.shape, value, dtype=info.dtype))  # noqa: E731
    add("const", 64, 64, 1, 16, 16, False, 1, const(1234))
    add("const", 16, 16, 1, 8, 8, False, 1, const(0))
    add("noise", 32, 32, 1, 8, 8, False, 1, lambda i: _noise(rng, i))
    add("noise", 33, 17, 1, 16, 16, False, 1, lambda i: _noise(rng, i))
    add("noise", 33, 17, 1, 16, 16, True, 1, lambda i: _noise(rng, i))
    add("noise", 17, 9, 3, 8, 8, False, 1, lambda i: _noise(rng, i))
    add("pixel", 1, 1, 1, 16, 12, False, 1, lambda i: np.full(i.shape, 4095, i.dtype))
    add("pixel", 1, 1, 3, 8, 8, False, 1, lambda i: np.array([[[1, 2, 3]]], i.dtype))
    add("line", 1, 97, 1, 16, 16, False, 1, lambda i: _smooth(rng, i))
    add("column", 97, 1, 1, 8, 8, False, 1, lambda i: _noise(rng, i))
    add("smooth", 101, 67, 1, 16, 12, False, 1, lambda i: _smooth(rng, i))
    add("smooth", 64, 80, 1, 16, 12, True, 1, lambda i: _smooth(rng, i))
    add("smooth", 45, 31, 3, 8, 8, False, 1, lambda i: _smooth(rng, i))
    add("smooth", 40, 40, 3, 16, 16, False, 1, lambda i: _smooth(rng, i))
    add("smooth", 50, 50, 1, 8, 8, False, 1, lambda i: _smooth(rng, i))
    add("twobit", 31, 29, 1, 16, 2, False, 1, lambda i: _noise(rng, i))
    add("byte", 30, 30, 1, 16, 8, False, 1, lambda i: _smooth(rng, i))
    add("signedmin", 20, 24, 1, 16, 16, True, 1, lambda i: np.full(i.shape, -32768, i.dtype))
    add("signedext", 20, 24, 1, 16, 16, True, 1,
        lambda i: np.tile(np.array([-32768, 32767, -1, 0], i.dtype), i.rows * i.columns // 4).reshape(i.shape))
    add("signedmin", 16, 16, 1, 16, 12, True, 1, lambda i: np.full(i.shape, -2048, i.dtype))
    add("multi", 24, 20, 1, 16, 16, False, 7, lambda i: _smooth(rng, i))
    add("multi", 16, 18, 3, 8, 8, False, 5, lambda i: _noise(rng, i))
    return images


REFERENCE_IMAGES: list[tuple[str, FrameInfo, list[np.ndarray]]] = _build()


def reference_params(predicate=None) -> list:
    """``pytest.param((info, frames), id=...)`` for each reference image (optionally filtered)."""
    return [
        pytest.param(info, frames, id=ident)
        for ident, info, frames in REFERENCE_IMAGES
        if predicate is None or predicate(info)
    ]


def make_dataset(info: FrameInfo, frames: list, uid: str = ExplicitVRLittleEndian, *, planar: int = 0) -> Dataset:
    """A Secondary Capture dataset holding `frames`.

    For a native little endian `uid` the frames are arrays, written colour by
    pixel (or by plane with ``planar=1``) and padded to even length; for any
    other `uid` they are codestreams, one fragment per frame.
    """
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = uid
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.PatientName = "Test^Pixels"
    ds.PatientID = "PIXELS-1"
    ds.Modality = "OT"
    ds.Rows, ds.Columns = info.rows, info.columns
    ds.SamplesPerPixel = info.samples_per_pixel
    ds.PhotometricInterpretation = info.photometric_interpretation
    if info.samples_per_pixel == 3:
        ds.PlanarConfiguration = planar
    ds.BitsAllocated = info.bits_allocated
    ds.BitsStored = info.bits_stored
    ds.HighBit = info.bits_stored - 1
    ds.PixelRepresentation = info.pixel_representation
    if len(frames) > 1:
        ds.NumberOfFrames = len(frames)
    if uid in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        arrays = [np.asarray(f).astype(np.asarray(f).dtype.newbyteorder("<")) for f in frames]
        if info.samples_per_pixel == 3 and planar == 1:
            arrays = [a.transpose(2, 0, 1) for a in arrays]
        data = b"".join(np.ascontiguousarray(a).tobytes() for a in arrays)
        ds.PixelData = data + b"\x00" * (len(data) & 1)
        ds["PixelData"].VR = "OW" if info.bits_allocated > 8 else "OB"
    else:
        ds.PixelData = encapsulate(list(frames))
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
    return ds
