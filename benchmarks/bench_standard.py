"""Our standard-syntax codecs beside the established implementations.

Three tables on the same corpus images, single thread, every round trip
verified:

* RLE Lossless: ours vs pylibjpeg-rle;
* JPEG-LS lossless: ours vs CharLS (pyjpegls);
* JPEG Lossless SV1: ours vs libjpeg-turbo (imagecodecs ``jpeg8`` lossless,
  predictor 1), imagecodecs ``ljpeg`` (liblj92) and Thomas Richter's libjpeg
  (pylibjpeg-libjpeg, decoder only: its row decodes *our* streams and its
  encode column repeats our encoder), plus GDCM and DCMTK as whole-file
  command-line runs (see :func:`cli_peers` for the method).

Images whose values use bits above Bits Stored are left out for every
entry (the gateway passes them through), so all entries see the same set.
Signed images are given to the peers as the Bits-Stored two's complement
pattern (the DICOM convention) and sign-extended back after decoding.

Run: ``python -m benchmarks.bench_standard [--only rle jpeg-ls jpeg-lossless cli] [--folders ...]``.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable

import numpy as np
import pydicom
from pydicom.encaps import generate_frames

from benchmarks.harness import Entry, Item, _Tally, arguments, corpus_dir, format_table, load_corpus, run
from gateway.codecs import get_codec
from gateway.codecs.base import FrameInfo
from gateway.pipeline.pixels import high_bits_used, iter_frames


def _pattern(frame: np.ndarray, info: FrameInfo) -> np.ndarray:
    """Unsigned Bits-Stored pattern of a frame (identity for unsigned data)."""
    if not info.signed:
        return frame
    unsigned = frame.view(frame.dtype.str.replace("i", "u"))
    return unsigned & np.array((1 << info.bits_stored) - 1, dtype=unsigned.dtype)


def _from_pattern(array: np.ndarray, info: FrameInfo) -> np.ndarray:
    """Frame of the codec convention from decoded unsigned patterns."""
    array = np.asarray(array).reshape(info.shape)
    if not info.signed:
        return array.astype(info.dtype, copy=False)
    values = array.astype(np.int32) & ((1 << info.bits_stored) - 1)
    values -= (values & (1 << (info.bits_stored - 1))) << 1
    return values.astype(info.dtype)


def _ours(name: str, keyword: str) -> Entry:
    codec = get_codec(keyword)
    return Entry(name, codec.encode_frame, codec.decode_frame, lambda info: codec.supports(info) is None)


def rle_entries() -> list[Entry]:
    import rle

    supports = _ours("", "RLELossless").supports

    def encode(frame: np.ndarray, info: FrameInfo) -> bytes:
        return rle.encode_pixel_data(
            frame.tobytes(),
            rows=info.rows,
            columns=info.columns,
            samples_per_pixel=info.samples_per_pixel,
            bits_allocated=info.bits_allocated,
            planar_configuration=0,
            byteorder="<",
        )

    def decode(data: bytes, info: FrameInfo) -> np.ndarray:
        raw = rle.decode_pixel_data(
            data,
            version=2,
            rows=info.rows,
            columns=info.columns,
            samples_per_pixel=info.samples_per_pixel,
            bits_allocated=info.bits_allocated,
        )
        planes = np.frombuffer(raw, dtype=info.dtype.newbyteorder("<"))
        planes = planes.reshape(info.samples_per_pixel, info.rows, info.columns)
        return planes.transpose(1, 2, 0).reshape(info.shape)  # RLE decodes colour-by-plane

    return [_ours("ours rle", "RLELossless"), Entry("pylibjpeg-rle", encode, decode, supports)]


def jpegls_entries() -> list[Entry]:
    import jpeg_ls

    supports = _ours("", "JPEGLSLossless").supports

    def encode(frame: np.ndarray, info: FrameInfo) -> bytes:
        return bytes(
            jpeg_ls.encode_buffer(
                _pattern(frame, info).tobytes(),
                info.rows,
                info.columns,
                info.samples_per_pixel,
                info.bits_stored,
                interleave_mode=2 if info.samples_per_pixel == 3 else 0,
            )
        )

    def decode(data: bytes, info: FrameInfo) -> np.ndarray:
        return _from_pattern(jpeg_ls.decode(np.frombuffer(data, dtype=np.uint8)), info)

    return [_ours("ours jpeg-ls", "JPEGLSLossless"), Entry("CharLS (pyjpegls)", encode, decode, supports)]


def sv1_entries() -> list[Entry]:
    import imagecodecs
    import libjpeg

    ours = _ours("ours jpeg-lossless", "JPEGLosslessSV1")

    def turbo_encode(frame: np.ndarray, info: FrameInfo) -> bytes:
        colour = {"colorspace": "RGB", "outcolorspace": "RGB"} if info.samples_per_pixel == 3 else {}
        return imagecodecs.jpeg8_encode(
            _pattern(frame, info), lossless=True, predictor=1, bitspersample=info.bits_stored, **colour
        )

    def turbo_decode(data: bytes, info: FrameInfo) -> np.ndarray:
        return _from_pattern(imagecodecs.jpeg8_decode(data), info)

    def lj92_encode(frame: np.ndarray, info: FrameInfo) -> bytes:
        return imagecodecs.ljpeg_encode(_pattern(frame, info), bitspersample=info.bits_stored)

    def lj92_decode(data: bytes, info: FrameInfo) -> np.ndarray:
        return _from_pattern(imagecodecs.ljpeg_decode(data), info)

    def libjpeg_decode(data: bytes, info: FrameInfo) -> np.ndarray:
        return _from_pattern(libjpeg.decode(data), info)

    lj92_supports: Callable[[FrameInfo], bool] = lambda info: ours.supports(info) and info.samples_per_pixel == 1
    return [
        ours,
        Entry("libjpeg-turbo (imagecodecs jpeg8)", turbo_encode, turbo_decode, ours.supports),
        Entry("liblj92 (imagecodecs ljpeg)", lj92_encode, lj92_decode, lj92_supports),
        Entry("libjpeg (pylibjpeg), decode only", ours.encode, libjpeg_decode, ours.supports),
    ]


def _fragments_size(path: Path) -> int:
    ds = pydicom.dcmread(path)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    return sum(len(f) for f in generate_frames(ds.PixelData, number_of_frames=frames))


def _wall(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, timeout=600)
    return time.perf_counter() - start


def cli_peers(
    items: list[Item], root: Path, supports: Callable[[FrameInfo], bool]
) -> tuple[dict[str, dict[str, _Tally]], dict[str, dict[str, int]]]:
    """Time GDCM and DCMTK as command-line programs over the corpus files.

    Method: for each file, wall time of the compress run (``gdcmconv --jpeg``
    / ``dcmcjpeg +e1``: SV1, optimised Huffman tables) and of the decompress
    run (``gdcmconv --raw`` / ``dcmdjpeg``), each minus the wall time of the
    same program copying the uncompressed file (``gdcmconv --raw`` /
    ``dcmconv``), which stands for process start, file parsing and writing.
    MB/s = raw pixel bytes / summed net time.  Sizes are the summed
    codestream fragment lengths; the decompressed pixels are checked against
    the originals.  Returns the tallies and each tool's size per image path.
    """
    tools = {
        "GDCM (gdcmconv, CLI)": (["gdcmconv", "--jpeg"], ["gdcmconv", "--raw"], ["gdcmconv", "--raw"]),
        "DCMTK (dcmcjpeg, CLI)": (["dcmcjpeg", "+e1"], ["dcmdjpeg"], ["dcmconv"]),
    }
    results: dict[str, dict[str, _Tally]] = {}
    sizes: dict[str, dict[str, int]] = {}
    for name, (compress, decompress, copy) in tools.items():
        tallies: dict[str, _Tally] = defaultdict(_Tally)
        sizes[name] = {}
        with tempfile.TemporaryDirectory() as tmp:
            packed, unpacked, copied = Path(tmp) / "c.dcm", Path(tmp) / "d.dcm", Path(tmp) / "n.dcm"
            for item in items:
                tally = tallies[item.folder]
                if not supports(item.info):
                    tally.skipped += 1
                    continue
                source = str(root / item.path)
                try:
                    base = _wall([*copy, source, str(copied)])
                    enc = _wall([*compress, source, str(packed)]) - base
                    dec = _wall([*decompress, str(packed), str(unpacked)]) - base
                    size = _fragments_size(packed)
                    back = list(iter_frames(pydicom.dcmread(unpacked)))
                    if len(back) != len(item.frames) or not all(
                        np.array_equal(a, b) for a, b in zip(back, item.frames)
                    ):
                        raise AssertionError("round trip differs")
                except (subprocess.SubprocessError, OSError, AssertionError, ValueError) as exc:
                    tally.errors.append(f"{item.path}: {type(exc).__name__}: {exc}")
                    continue
                sizes[name][item.path] = size
                tally.raw += item.raw_bytes
                tally.compressed += size
                tally.enc_s += max(enc, 0.0)
                tally.dec_s += max(dec, 0.0)
                tally.images += 1
        total = _Tally()
        for tally in list(tallies.values()):
            for attr in ("raw", "compressed", "enc_s", "dec_s", "images", "skipped"):
                setattr(total, attr, getattr(total, attr) + getattr(tally, attr))
            total.errors += tally.errors
        tallies["ALL"] = total
        results[name] = tallies
        print(f"  {name}: done", file=sys.stderr)
    return results, sizes


def entry_sizes(entry: Entry, items: list[Item]) -> dict[str, int]:
    """Codestream bytes per image path for an in-process entry (images it carries)."""
    sizes = {}
    for item in items:
        if entry.supports(item.info):
            try:
                sizes[item.path] = sum(len(entry.encode(f, item.info)) for f in item.frames)
            except Exception:  # noqa: BLE001 - a peer failing on an image just leaves it out
                continue
    return sizes


def size_summary(sizes: dict[str, dict[str, int]], reference: str) -> str:
    """Total bytes of each entry on the images that every entry carried."""
    common = set.intersection(*(set(v) for v in sizes.values()))
    base = sum(sizes[reference][p] for p in common)
    lines = [f"Total codestream bytes on the {len(common)} images every entry carried:"]
    for name, per_image in sizes.items():
        total = sum(per_image[p] for p in common)
        lines.append(f"- {name}: {total:,} bytes ({total / base:.5f} x {reference})")
    return "\n".join(lines)


def main() -> None:
    args = arguments(__doc__.splitlines()[0])
    root = corpus_dir()
    items = load_corpus(root, args.folders)
    kept = [it for it in items if not any(high_bits_used(f, it.info) for f in it.frames)]
    print(
        f"{len(kept)} images, {sum(i.raw_bytes for i in kept) / 1e6:.1f} MB of pixels "
        f"({len(items) - len(kept)} with data above Bits Stored left out)\n"
    )
    groups = {"rle": rle_entries, "jpeg-ls": jpegls_entries, "jpeg-lossless": sv1_entries}
    sv1_sizes: dict[str, dict[str, int]] = {}
    for group, make in groups.items():
        if args.only and group not in args.only:
            continue
        entries = make()
        run(entries, kept, title=f"{group} (single thread)", verify=not args.noverify, repeat=args.repeat)
        if group == "jpeg-lossless":
            # The liblj92 row uses predictor 6 and libjpeg's rows are our streams.
            sv1_sizes = {e.name: entry_sizes(e, kept) for e in entries[:2]}
        print()
    if not args.only or "cli" in args.only:
        import shutil

        if shutil.which("gdcmconv") and shutil.which("dcmcjpeg"):
            ours = _ours("ours jpeg-lossless", "JPEGLosslessSV1")
            tallies, cli_sizes = cli_peers(kept, root, ours.supports)
            print(format_table(tallies, "jpeg-lossless, command-line peers"))
            sv1_sizes = {ours.name: sv1_sizes.get(ours.name) or entry_sizes(ours, kept), **sv1_sizes, **cli_sizes}
        else:
            print("GDCM / DCMTK command-line tools not found: their rows are left out")
    if len(sv1_sizes) > 1:
        print()
        print(size_summary(sv1_sizes, "ours jpeg-lossless"))

if __name__ == "__main__":
    main()
