"""The recompression policy: decode, encode, rebuild the dataset, verify.

:func:`recompress` turns one dataset into what the gateway forwards: either a
copy whose Pixel Data is re-encoded in the target transfer syntax (every
other attribute unchanged), or the ORIGINAL dataset, untouched, with the
reason it was passed through.  It never raises because of the image: a
float, 1-bit, lossy, undecodable or otherwise unsuitable image is simply
kept as received.  Caller mistakes (wrong argument types, an unknown
target syntax) do raise.

Verification decodes what was written with our decoder and, where one
exists, an independent decoder of another project (:data:`REFERENCE_DECODERS`),
and compares both with the decoded original value for value.
"""

from __future__ import annotations

import copy
import hashlib
import io
import os
import shutil
import struct
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pydicom
from pydicom import Dataset
from pydicom.dataelem import DataElement
from pydicom.encaps import generate_frames
from pydicom.hooks import raw_element_vr
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from gateway.codecs import configured, get_codec, resolve_uid
from gateway.codecs.base import Codec, FrameInfo
from gateway.dicom.filemeta import stamp
from gateway.dicom.uids import TRANSFER_SYNTAXES, is_encapsulated, is_known
from gateway.errors import CodecNotFoundError, GatewayError, UnsupportedImageError
from gateway.pipeline.decoders import (NATIVE, REFERENCE_DECODERS, DecodeFrame, decoder_name, start_image,
                                       verifying_decoder)
from gateway.pipeline.encoding import needs_reencoding, reencode
from gateway.pipeline.pixels import (
    END_MARKED,
    decoded_frames,
    deferred_pixels,
    ends_with_marker,
    frame_decoder,
    frame_info,
    high_bits_used,
    iter_frames,
    native_frames,
    number_of_frames,
    transfer_syntax,
)
from gateway.pipeline.verify import first_difference, frame_difference

__all__ = [
    "Outcome",
    "to_little_endian",
    "MALFORMED_PREFIX",
    "recompress",
    "recompress_file",
    "NATIVE_TARGETS",
    "LOSSLESS_SOURCES",
    "REFERENCE_DECODERS",
    "pixel_hash",
]

# Syntaxes that write Pixel Data uncompressed: the pipeline can produce these.
NATIVE_TARGETS = frozenset({ExplicitVRLittleEndian, ImplicitVRLittleEndian})

# Encapsulated syntaxes whose pixels are exactly the original ones.  Any other
# encapsulated source (JPEG baseline/extended, JPEG-LS near-lossless, JPEG
# 2000 and HTJ2K that may be lossy, video, JPIP...) is kept as received:
# re-encoding decoded lossy pixels gains nothing and loses the original.
LOSSLESS_SOURCES = frozenset(
    uid for uid, entry in TRANSFER_SYNTAXES.items() if entry.encapsulated and entry.lossless and not entry.private
)

_J2K_FAMILY = frozenset(
    {"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202"}
)

MAX_FRAME_BYTES = 256 << 20
"""Largest decoded frame the pipeline decodes and re-encodes; a larger one is forwarded as received.

The pipeline holds a frame several times over (decoded, encoded, decoded
again by two decoders to verify), and the attributes of a few bytes of
compressed data can declare any size: this bounds what one instance can
make a worker allocate.  Real frames stay far below it (a 4096 x 3328
mammogram is 27 MiB); a 10000 x 10000 colour photograph (286 MiB) would be
kept as received."""

# Largest offset a Basic Offset Table (32-bit) can hold.
_BOT_LIMIT = 2**32 - 1

_PIXEL_DATA = 0x7FE00010
_UNDEFINED_LENGTH = 0xFFFFFFFF
_EXTENDED_OFFSETS = (0x7FE00001, 0x7FE00002)  # Extended Offset Table (Lengths)


MALFORMED_PREFIX = "decoding failed"
"""How the reason of an original whose pixel data is damaged starts."""


@dataclass(frozen=True)
class Outcome:
    """What to forward, and how it came about.

    A recompressed dataset is a copy of the input except for its sequences,
    which both share: change a sequence of one and the other sees it.
    """

    dataset: Dataset  # the recompressed dataset, or the ORIGINAL unchanged
    transfer_syntax: str  # its transfer syntax UID
    recompressed: bool
    reason: str | None  # why the original was passed through (None when recompressed)
    original_pixel_bytes: int  # size of the incoming Pixel Data value
    encoded_pixel_bytes: int  # size of the outgoing one
    encode_seconds: float  # decoding the original plus encoding it
    verify_seconds: float
    source_decoder: str | None = None  # proof name of what read the original ("native", "pylibjpeg-rle", ...)
    pixel_hash: str | None = None  # SHA-256 of the original's pixel values (see pixel_hash), when decoded
    verified_by: tuple[tuple[str, str], ...] = ()  # (decoder, SHA-256 of what it decoded) per verifying decoder
    encode_options: tuple[tuple[str, Any], ...] = ()  # the encoder options written with, e.g. (("version", 2),)

    def close(self) -> None:
        """Remove the file a large encoded Pixel Data value was kept in (``recompress(scratch=...)``), once written.

        The file is anonymous and goes with the process at the latest; this
        frees its space as soon as the object is stored.  Nothing to do for a
        value in memory.
        """
        if self.recompressed and "PixelData" in self.dataset:
            _close(self.dataset["PixelData"].value)

    @property
    def malformed(self) -> bool:
        """The original's pixel data is damaged: shorter than its attributes say, or it does not decode."""
        return bool(self.reason and self.reason.startswith(MALFORMED_PREFIX))


# ---------------------------------------------------------------- helpers


def _pixel_bytes(ds: Dataset) -> int:
    if "PixelData" not in ds:
        return 0
    deferred = deferred_pixels(ds)
    if deferred is not None:  # left in its file: its length, without reading it
        return deferred[2]
    value = ds.PixelData
    return len(value) if value is not None else 0


def _pass(ds: Dataset, reason: str, original: int, enc_s: float = 0.0, ver_s: float = 0.0, *,
          source: str | None = None, digest: str | None = None) -> Outcome:
    """The original dataset, unchanged, with the reason it was not recompressed."""
    try:
        uid = str(transfer_syntax(ds))
    except GatewayError:
        uid = ""
    return Outcome(ds, uid, False, reason, original, original, enc_s, ver_s, source, digest)


def pixel_hash(frames: Sequence[np.ndarray]) -> str:
    """SHA-256 of pixel values as ``pydicom.pixels.pixel_array(ds, raw=True)`` returns them.

    All frames in order, C order, the little-endian bytes of the frame dtype:
    anyone can recompute it from a stored file with plain pydicom.
    """
    digest = hashlib.sha256()
    for frame in frames:
        digest.update(_little_endian(frame))
    return digest.hexdigest()


def _little_endian(frame: np.ndarray) -> memoryview:
    """The bytes :func:`pixel_hash` reads of `frame`."""
    return np.ascontiguousarray(frame, dtype=frame.dtype.newbyteorder("<")).data


_ITEM_TAG = b"\xfe\xff\x00\xe0"  # (FFFE,E000) Item, little endian


SPILL_BYTES = 64 << 20
"""An encoded Pixel Data value given a scratch folder moves there, out of memory, once it grows past this."""


class _Encapsulation:
    """An encapsulated Pixel Data value built one codestream at a time (PS3.5 A.4).

    One item per frame behind a Basic Offset Table, or behind an empty one
    and an Extended Offset Table with `extended` (offsets beyond
    ``_BOT_LIMIT``).  Each codestream is copied in as soon as it is encoded
    and can be dropped at once, so the codestreams are never held twice over
    (as a list and as the value); the value is written into a ``BytesIO``,
    whose finished buffer becomes the ``bytes`` value without a copy.  The
    result is byte for byte what pydicom's ``encapsulate`` (``has_bot=True``)
    and ``encapsulate_extended`` write.

    With a `scratch` folder, a value that grows past :data:`SPILL_BYTES`
    moves into an anonymous temporary file there (removed by the system
    once closed, whatever happens to the process), and the value is that
    file: an image of thousands of frames is then held in memory a few
    frames at a time, not as its whole encoding.
    """

    def __init__(self, frames: int, *, extended: bool = False, scratch: Path | None = None) -> None:
        self.reserved = 0 if extended else frames
        self.scratch = scratch
        self.buffer: Any = io.BytesIO()
        self.buffer.write(_ITEM_TAG + struct.pack("<I", 4 * self.reserved) + bytes(4 * self.reserved))
        self.first = self.buffer.tell()
        self.offsets: list[int] = []
        self.lengths: list[int] = []

    def __len__(self) -> int:
        return self.buffer.tell()

    def add(self, stream: bytes) -> None:
        """Append one frame's codestream as an item, padded to an even length with 00."""
        odd = len(stream) & 1
        self.offsets.append(self.buffer.tell() - self.first)
        self.lengths.append(len(stream) + odd)
        self.buffer.write(_ITEM_TAG + struct.pack("<I", len(stream) + odd))
        self.buffer.write(stream)
        if odd:
            self.buffer.write(b"\x00")
        if self.scratch is not None and isinstance(self.buffer, io.BytesIO) and self.buffer.tell() > SPILL_BYTES:
            spilled = tempfile.TemporaryFile(dir=self.scratch)
            try:
                spilled.write(self.buffer.getbuffer())
            except BaseException:
                spilled.close()
                raise
            self.buffer = spilled

    def finish(self) -> tuple[bytes | BinaryIO, tuple[bytes, bytes] | None]:
        """The value and, when the offsets outgrow the Basic Offset Table, the Extended Offset Table and lengths.

        The value is ``bytes``, or the file it moved to (positioned at its start).
        """
        count = len(self.offsets)
        extended = (struct.pack(f"<{count}Q", *self.offsets), struct.pack(f"<{count}Q", *self.lengths))
        fits = not self.offsets or self.offsets[-1] <= _BOT_LIMIT
        if self.reserved == count and fits:
            if count:
                self.buffer.seek(8)
                self.buffer.write(struct.pack(f"<{count}I", *self.offsets))
            return self._value(), None
        if not self.reserved:
            return self._value(), extended
        # Fewer codestreams than frames, or offsets beyond the Basic Offset Table: the table is
        # rewritten, which costs a copy (an encoding stopped early, or a value larger than 4 GiB).
        table = (_ITEM_TAG + struct.pack(f"<I{count}I", 4 * count, *self.offsets) if fits
                 else _ITEM_TAG + struct.pack("<I", 0))
        if isinstance(self.buffer, io.BytesIO):
            return table + self._value()[self.first:], None if fits else extended
        rewritten = tempfile.TemporaryFile(dir=self.scratch)
        rewritten.write(table)
        self.buffer.seek(self.first)
        shutil.copyfileobj(self.buffer, rewritten, 1 << 20)
        self.buffer.close()
        self.buffer = rewritten
        return self._value(), None if fits else extended

    def close(self) -> None:
        """Drop what was written (the file it moved to is closed, and so removed)."""
        _close(self.buffer)
        self.buffer = io.BytesIO()

    def _value(self) -> bytes | BinaryIO:
        if not isinstance(self.buffer, io.BytesIO):
            value = self.buffer
            value.flush()
            value.seek(0)
            self.buffer = io.BytesIO()
            return value
        value = self.buffer.getvalue()  # the buffer itself, not a copy, once nothing is written after
        self.buffer = io.BytesIO()
        return value


def _close(value: Any) -> None:
    """Close a Pixel Data value kept in a file (:data:`SPILL_BYTES`), which removes it; bytes are left alone."""
    if hasattr(value, "fileno"):
        value.close()


def value_size(value: bytes | BinaryIO) -> int:
    """Size of a Pixel Data value: ``bytes``, or the file an encoded value moved to (:data:`SPILL_BYTES`)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return len(value)
    return os.fstat(value.fileno()).st_size


def _native_bytes(frames: Sequence[np.ndarray], info: FrameInfo, planar: int) -> bytes:
    """Frames as native little-endian Pixel Data, padded to an even length.

    Each frame is written into one buffer as it comes (from its file, or
    decoded), whose finished value is the ``bytes`` returned without a copy:
    a list of every frame's bytes joined at the end held the image twice over,
    three times with the pad byte added.
    """
    buffer = io.BytesIO()
    for frame in frames:
        little = frame.astype(frame.dtype.newbyteorder("<"), copy=False)
        if info.samples_per_pixel > 1 and planar == 1:
            little = little.transpose(2, 0, 1)
        buffer.write(np.ascontiguousarray(little).data)
        del little
    if buffer.tell() & 1:
        buffer.write(b"\x00")
    return buffer.getvalue()


# (7FE0,0010) as its tag's bytes read in either byte order: a cheap sign that a sequence's raw value may hold one.
_PIXEL_TAG_BYTES = (struct.pack("<HH", 0x7FE0, 0x0010), struct.pack(">HH", 0x7FE0, 0x0010))


def _nested_encapsulated(ds: Dataset) -> str | None:
    """The name of the first sequence of `ds` whose items hold encapsulated Pixel Data (an icon), else None.

    A sequence still in its raw form is parsed only when its bytes hold
    Pixel Data's tag, so the functional groups of an enhanced multi-frame
    image are not read for this.  No value but a sequence is parsed: an item
    is searched by its elements' tags and lengths (pydicom's warning about a
    value it finds malformed quotes the value, a patient's as well).
    """
    for tag in list(ds.keys()):
        element = _sequence_with_pixel_tag(ds, tag)
        if element is not None and any(_holds_encapsulated_pixels(item) for item in element.value):
            return element.keyword or str(element.tag)
    return None


def _sequence_with_pixel_tag(ds: Dataset, tag: int) -> DataElement | None:
    """Element `tag` of `ds`, parsed, when it is a sequence whose bytes may hold Pixel Data's tag; else None.

    A value left in its file (``dcmread(defer_size=...)``) is read only once
    its VR says it is a sequence: reading the Pixel Data of a large
    multi-frame image here would put all of it in memory, and keep it there.
    """
    raw = ds.get_item(tag, keep_deferred=True)
    vr = raw.VR
    if vr in (None, "UN") and not isinstance(raw, DataElement):  # the VR pydicom would give it, value left as it is
        found: dict[str, Any] = {}
        raw_element_vr(raw, found, ds=ds)
        vr = found["VR"]
    if vr not in ("SQ", "UN"):
        return None
    value = raw.value
    if isinstance(value, (bytes, bytearray)) and not any(mark in value for mark in _PIXEL_TAG_BYTES):
        return None
    element = ds[tag]
    return element if element.VR == "SQ" else None


def _holds_encapsulated_pixels(item: Dataset) -> bool:
    """Whether `item`, or an item of a sequence in it, holds Pixel Data of undefined length (encapsulated)."""
    for tag in list(item.keys()):
        if tag == _PIXEL_DATA:
            raw = item.get_item(tag, keep_deferred=True)
            undefined = raw.is_undefined_length if isinstance(raw, DataElement) else raw.length == _UNDEFINED_LENGTH
            if undefined:
                return True
            continue
        nested = _sequence_with_pixel_tag(item, tag)
        if nested is not None and any(_holds_encapsulated_pixels(inner) for inner in nested.value):
            return True
    return False


def _copy_without_pixels(ds: Dataset, *, share_sequences: bool) -> Dataset:
    """A copy of `ds` that shares (rather than copies) the old Pixel Data.

    The caller replaces Pixel Data in the copy; the original stays untouched.
    With `share_sequences` top-level sequences are shared too: a deep copy
    of an enhanced multi-frame image's functional groups costs far more than
    encoding its pixels, and the pipeline never changes a sequence.  Elements
    still in their raw form (never accessed: most of a scanner header) are
    immutable tuples and are shared as well; parsed elements are copied, so
    setting a value in the copy never reaches the original.
    """
    if not share_sequences:
        memo: dict[int, object] = {}
        if _PIXEL_DATA in ds:
            # As it is: a value left in its file stays there (the copy would read it whole).
            element = ds.get_item(_PIXEL_DATA, keep_deferred=True)
            memo[id(element)] = element
        cached = ds.__dict__.get("_pixel_array")
        if cached is not None:
            memo[id(cached)] = None
        return copy.deepcopy(ds, memo)
    new = copy.copy(ds)  # the instance attributes; the element dict is replaced below
    elements: dict = {}
    for tag, element in ds._dict.items():
        if isinstance(element, DataElement) and tag != _PIXEL_DATA and element.VR != "SQ":
            element = copy.deepcopy(element)
        elements[tag] = element
    new._dict = elements
    new._private_blocks = {}
    new._pixel_array = None
    new._pixel_id = {}
    new._pixel_array_opts = dict(ds._pixel_array_opts)
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        new.file_meta = copy.deepcopy(meta)
    return new


def to_little_endian(ds: Dataset, keep: DataElement | None = None) -> None:
    """Re-express a dataset read as big endian so that it is written explicit VR little endian.

    Each value keeps its bytes, those of word-sized binary VRs (numbers,
    overlay, LUT and icon data...) swapped per word (:func:`reencode`).
    `keep` (the new, already little endian, Pixel Data) is left alone.
    pydicom may raise about an element it cannot parse.
    """
    reencode(ds, implicit=False, keep=keep)


def _verify(
    target: str,
    codec: Codec | None,
    new: Dataset,
    fragments: int | None,
    frames: Sequence[np.ndarray],
    info: FrameInfo,
    digest: str,
    proof: list[tuple[str, str]],
) -> str | None:
    """None when what we wrote decodes to `frames`, by our decoder and the independent one.

    There must be as many frames as the written dataset's Number of Frames
    says, and one codestream for each: frames missing from both the
    original's decoded frames and the output would otherwise go unseen.

    Appends (decoder name, pixel hash of what it decoded) to `proof` for every
    decoder that agreed.  A decoder agrees only when its frames equal `frames`
    in shape, dtype and every value, so the hash of what it decoded is
    `digest`, the hash of `frames`: it is not computed again.
    """
    if codec is None:  # native: read the written dataset back
        try:
            decoded = list(iter_frames(new))
        except GatewayError as exc:
            return f"verification failed: written native pixel data cannot be read: {exc}"
        reason = first_difference(frames, decoded)
        if reason:
            return f"verification failed: {reason}"
        proof.append((NATIVE, digest))
        return None
    assert fragments is not None
    decoders: list[tuple[str, DecodeFrame]] = [(f"ours/{codec.name}", codec.decode_frame)]
    reference = verifying_decoder(target)
    if reference is not None:
        decoders.append((decoder_name(reference), reference))
    try:
        declared = number_of_frames(new)
    except GatewayError as exc:
        return f"verification failed: {exc}"
    if not fragments == len(frames) == declared:
        return (f"verification failed: {fragments} codestreams written for {len(frames)} frame(s), "
                f"(0028,0008) 'Number of Frames' {declared}")
    # One walk through the encapsulated value, fragment by fragment: that checks
    # the encapsulation as well as the codestreams, and holds one frame's
    # codestream and decoded values at a time beside the original.  Each
    # codestream is read by our decoder first, then by the independent one.
    end_marked = str(target) in END_MARKED
    value = new.PixelData
    if not isinstance(value, bytes):  # the file it moved to: read from its start, left there for the writer
        value.seek(0)
    read_back = generate_frames(value, number_of_frames=declared)
    start_image(target)
    for number, expected in enumerate(frames, start=1):
        try:
            fragment = next(read_back)
        except StopIteration:
            return f"verification failed: frame count differs: the output ends after {number - 1} frame(s)"
        except Exception as exc:  # pydicom raises ValueError and others for bad items
            return f"verification failed: encapsulated pixel data cannot be read back: {exc}"
        if end_marked and not ends_with_marker(fragment):
            return "verification failed: a written codestream does not end with its end marker"
        for label, decode in decoders:
            try:
                actual = decode(fragment, info)
            except Exception as exc:  # a decoder of another project raises its own types
                return f"verification failed: {label} cannot decode the output: {type(exc).__name__}: {exc}"
            reason = frame_difference(number, np.asarray(expected), np.asarray(actual))
            if reason:
                return f"verification failed ({label}): {reason}"
            del actual
    try:
        extra = next(read_back, None)
    except Exception as exc:
        return f"verification failed: encapsulated pixel data cannot be read back: {exc}"
    if extra is not None:
        return f"verification failed: more than {len(frames)} frame(s) read back"
    proof.extend((label, digest) for label, _ in decoders)
    return None


# ---------------------------------------------------------------- policy


def recompress(ds: Dataset, target: str, *, verify: bool = True, allow_larger: bool = True,
               encode_options: Mapping[str, Mapping[str, Any]] | None = None,
               scratch: Path | None = None) -> Outcome:
    """Recompress `ds` losslessly into `target`, or pass it through with a reason.

    Parameters
    ----------
    ds
        The dataset as received (with ``file_meta.TransferSyntaxUID``).
    target
        Transfer syntax UID, pydicom keyword or codec name.  A native syntax
        (Explicit or Implicit VR Little Endian) writes uncompressed pixels.
    verify
        Decode the output again (ours and an independent decoder) and compare
        it with the original frames before accepting it.
    allow_larger
        When False, an encoding whose Pixel Data is not smaller than the
        incoming one is dropped and the original passed through: the gateway
        never inflates what it stores.  Decoding to a native target is exempt
        (a destination that accepts nothing compressed needs it whatever the size).
    encode_options
        Encoder options by transfer syntax UID, e.g. ``{private.UID:
        {"version": 2}}``; those of `target` are given to its encoder
        (:func:`gateway.codecs.configured`) and named in the outcome.  Without
        them, the codec module's defaults.
    scratch
        A folder where an encoded Pixel Data value larger than
        :data:`SPILL_BYTES` is kept instead of memory: the recompressed
        dataset's value is then an anonymous temporary file there (which
        :func:`gateway.dicom.splice.splice_write` and
        :func:`~gateway.dicom.splice.write_dataset` write; pydicom's
        ``dcmwrite`` does not), removed once the outcome is dropped.  Without
        it, the value is ``bytes``.

    Raises
    ------
    TypeError
        `ds` is not a Dataset or `target` not a string, or the target's
        codec takes no such encoder option.
    CodecNotFoundError
        `target` is unknown, or compressed with no codec registered for it.
    """
    if not isinstance(ds, Dataset):
        raise TypeError(f"ds must be a pydicom Dataset, not {type(ds).__name__}")
    if not isinstance(target, str):
        raise TypeError(f"target must be a transfer syntax string, not {type(target).__name__}")
    target_uid = UID(resolve_uid(target))
    codec: Codec | None = None
    options = dict((encode_options or {}).get(str(target_uid), {}))
    if target_uid not in NATIVE_TARGETS:
        codec = configured(get_codec(target_uid), options)  # CodecNotFoundError: a configuration mistake
    else:
        options = {}

    for keyword in ("FloatPixelData", "DoubleFloatPixelData"):
        if keyword in ds:
            return _pass(ds, f"'{keyword}' holds floating point pixels; kept as received", 0)
    if "PixelData" not in ds:
        return _pass(ds, "no pixel data", 0)
    try:
        original = _pixel_bytes(ds)
    except Exception as exc:  # deferred read or a damaged element
        return _pass(ds, f"decoding failed: Pixel Data cannot be read: {exc}", 0)

    try:
        source = transfer_syntax(ds)
    except GatewayError as exc:
        return _pass(ds, f"decoding failed: {exc}", original)
    same = source == target_uid  # still decoded: a damaged codestream is found, and the proof gets its hash
    if not is_known(source) and not _ours(source):
        return _pass(ds, f"unknown transfer syntax {source}; kept as received", original)
    if is_encapsulated(source) and str(source) not in LOSSLESS_SOURCES and not _ours(source):
        return _pass(
            ds,
            f"lossy-compressed source ({source.name}); re-encoding its decoded pixels "
            "would gain nothing, kept as received",
            original,
        )

    try:
        info = frame_info(ds)
    except GatewayError as exc:
        return _pass(ds, f"decoding failed: {exc}", original)
    if info.bits_allocated == 1:
        return _pass(ds, "(0028,0100) 'Bits Allocated' 1 (bit-packed) pixel data; kept as received", original)
    if info.bits_allocated not in (8, 16, 32):
        return _pass(ds, f"(0028,0100) 'Bits Allocated' {info.bits_allocated} is not carried by our codecs", original)
    if info.frame_bytes > MAX_FRAME_BYTES:
        return _pass(ds, f"a frame of {info.rows} x {info.columns} x {info.samples_per_pixel} samples decodes to "
                     f"{info.frame_bytes} bytes, above the {MAX_FRAME_BYTES} a frame may take; kept as received",
                     original)
    colour_converted = str(source) in _J2K_FAMILY and info.photometric_interpretation in ("YBR_RCT", "YBR_ICT")
    if colour_converted:
        # JPEG 2000 decoders undo the reversible colour transform: frames are RGB.
        info = replace(info, photometric_interpretation="RGB")
    if codec is not None and not same:
        reason = codec.supports(info)
        if reason:
            return _pass(ds, f"{codec.name} cannot carry this image: {reason}", original)

    start = time.perf_counter()
    try:
        # Native frames are views of the value, or read from the file one at a time when the value
        # was left there (a large multi-frame image); decoded frames are held, or for a large image
        # decoded again on each pass.
        frames = native_frames(ds) if not is_encapsulated(source) else decoded_frames(ds)
        # One pass: the hash of the original's values and the frames with bits above Bits Stored.
        hasher, high = hashlib.sha256(), None
        for number, frame in enumerate(frames, start=1):
            hasher.update(_little_endian(frame))
            if high is None and high_bits_used(frame, info):
                high = number
    except UnsupportedImageError as exc:
        return _pass(ds, f"unsupported image: {exc}", original)
    except GatewayError as exc:
        return _pass(ds, f"decoding failed: {exc}", original)
    source_name = frame_decoder(ds)[0]
    digest = hasher.hexdigest()  # what pixel_hash(frames) returns
    proven = {"source": source_name, "digest": digest}
    if same:
        return _pass(ds, "already in target syntax", original, **proven)
    if high is not None:
        return _pass(
            ds,
            f"frame {high}: bits above (0028,0101) 'Bits Stored' {info.bits_stored} hold data; "
            "kept as received",
            original, **proven)
    try:
        nested = _nested_encapsulated(ds)
    except Exception as exc:  # noqa: BLE001 - pydicom parses a sequence here: a damaged one raises anything
        return _pass(ds, f"a sequence cannot be read: {type(exc).__name__}: {exc}; kept as received", original,
                     **proven)
    if nested is not None:
        return _pass(ds, f"'{nested}' holds encapsulated Pixel Data (an icon), unreadable in a file of another "
                     "transfer syntax than its own (PS3.5 A.4); kept as received", original, **proven)

    # Data read in another encoding than the target's (implicit VR, big endian) is rewritten element by element
    # below, sequences included, its value bytes kept.
    reencoded = source == "1.2.840.10008.1.2.2" or needs_reencoding(ds, target_uid == ImplicitVRLittleEndian)
    new = _copy_without_pixels(ds, share_sequences=not reencoded)
    fragments: int | None = None  # how many codestreams were written
    encapsulation: _Encapsulation | None = None
    try:
        if codec is None:
            planar = int(ds.get("PlanarConfiguration", 0) or 0) if info.samples_per_pixel > 1 else 0
            planar = planar if planar in (0, 1) else 0
            value = _native_bytes(frames, info, planar)
            element = DataElement(_PIXEL_DATA, "OB" if info.bits_allocated == 8 else "OW", value)
            extended = None
            if info.samples_per_pixel > 1:
                new.PlanarConfiguration = planar
        else:
            # A codec may code the frames of one image together (inter-frame prediction): its streams are
            # taken one by one where it gives them so (a list of them all would be a second copy of the value).
            encode_frames = getattr(codec, "iter_encode_frames", None) or getattr(codec, "encode_frames", None)
            encapsulation = _Encapsulation(len(frames), extended=original > _BOT_LIMIT, scratch=scratch)
            if encode_frames is not None:
                streams = encode_frames(frames, info)
            else:
                streams = (codec.encode_frame(frame, info) for frame in frames)
            for stream in streams:  # each codestream goes into the value as soon as it is encoded
                encapsulation.add(stream)
                del stream
                if not allow_larger and len(encapsulation) >= original:
                    # It would not shrink the pixel data: no use encoding the rest, nor finishing the value
                    # (a copy of what was written, as large as the original).
                    written = len(encapsulation)
                    del streams
                    encapsulation.close()
                    return _pass(ds, f"{codec.name} would not shrink the pixel data ({written} bytes or more, "
                                 f"{original} received); kept as received", original,
                                 time.perf_counter() - start, **proven)
            del streams
            fragments = len(encapsulation.offsets)
            value, extended = encapsulation.finish()
            encapsulation = None
            element = DataElement(_PIXEL_DATA, "OB", value, is_undefined_length=True)
            if info.samples_per_pixel > 1:
                # The codestream fixes the sample order; PS3.5 8.2 and G.2 note 2: 0.
                new.PlanarConfiguration = 0
    except UnsupportedImageError as exc:
        if encapsulation is not None:
            encapsulation.close()
        return _pass(ds, f"{target_uid.name} cannot carry this image: {exc}", original, **proven)
    except GatewayError as exc:
        if encapsulation is not None:
            encapsulation.close()
        return _pass(ds, f"encoding failed: {exc}", original, **proven)
    except BaseException:
        if encapsulation is not None:
            encapsulation.close()
        raise
    size = value_size(value)
    if codec is not None and not allow_larger and size >= original:
        _close(value)
        return _pass(
            ds,
            f"{codec.name} would not shrink the pixel data ({size} bytes, {original} received); "
            "kept as received",
            original,
            time.perf_counter() - start, **proven)
    for tag in _EXTENDED_OFFSETS:
        if tag in new:
            del new[tag]
    new[_PIXEL_DATA] = element
    if extended is not None:
        new.ExtendedOffsetTable, new.ExtendedOffsetTableLengths = extended
    if colour_converted:
        new.PhotometricInterpretation = "RGB"
    if str(target_uid) in _J2K_FAMILY and info.photometric_interpretation == "RGB":
        # Our JPEG 2000 and HTJ2K codestreams carry RGB through the reversible colour transform (PS3.5 8.2.4,
        # which 8.2.14 applies to HTJ2K).
        new.PhotometricInterpretation = "YBR_RCT"
    if reencoded:
        try:
            reencode(new, implicit=target_uid == ImplicitVRLittleEndian, keep=new[_PIXEL_DATA])
        except Exception as exc:  # pydicom parses sequences and ambiguous elements here; bad values raise many types
            _close(value)
            return _pass(ds, f"attributes cannot be carried into {target_uid.name}: {type(exc).__name__}: {exc}",
                         original, **proven)
    if not target_uid.is_transfer_syntax:
        # A syntax pydicom does not know (ours): tell it how the dataset is written.
        target_uid = UID(str(target_uid))
        target_uid.set_private_encoding(False, True)
    new.file_meta.TransferSyntaxUID = target_uid
    stamp(new.file_meta)  # the gateway wrote this content: PS3.10 7.1 names the writer
    encode_seconds = time.perf_counter() - start

    verify_seconds = 0.0
    verified_by: list[tuple[str, str]] = []
    if verify:
        start = time.perf_counter()
        try:
            reason = _verify(target_uid, codec, new, fragments, frames, info, digest, verified_by)
        except BaseException:
            _close(value)
            raise
        verify_seconds = time.perf_counter() - start
        if reason:
            _close(value)
            return _pass(ds, reason, original, encode_seconds, verify_seconds, **proven)
    return Outcome(new, str(target_uid), True, None, original, size, encode_seconds, verify_seconds,
                   source_name, digest, tuple(verified_by), tuple(sorted(options.items())))


def _ours(uid: UID) -> bool:
    """True for a syntax a lossless codec of our registry writes."""
    try:
        get_codec(str(uid))
    except CodecNotFoundError:
        return False
    return True


def recompress_file(src: Path, dst: Path, target: str, verify: bool = True, *,
                    encode_options: Mapping[str, Mapping[str, Any]] | None = None) -> Outcome:
    """Recompress the DICOM file `src` into `dst` (see :func:`recompress`).

    A passed-through image is copied byte for byte.  `dst` appears only when
    complete (written beside it, then renamed).  Unreadable files raise
    pydicom's ``InvalidDicomError`` or ``OSError``.
    """
    src, dst = Path(src), Path(dst)
    ds = pydicom.dcmread(src)
    outcome = recompress(ds, target, verify=verify, encode_options=encode_options)
    partial = dst.with_name(f".{dst.name}.partial")
    try:
        if outcome.recompressed:
            outcome.dataset.save_as(partial, enforce_file_format=True)
        else:
            shutil.copyfile(src, partial)
        os.replace(partial, dst)
    finally:
        partial.unlink(missing_ok=True)
    return outcome
