"""Shared codec benchmark harness: corpus loading, timing, verification, tables.

Each benchmark script builds a list of :class:`Entry` (ours and the peers),
loads the corpus once with :func:`load_corpus` and calls :func:`run`, which
measures the entries interleaved (image by image, each entry in turn, so that
a noisy machine's load falls on all alike) and prints one table per run: ratio and encode/decode MB/s per corpus folder and
overall.  Every round trip is verified unless ``verify=False`` is asked for;
a mismatch is reported, never silently timed.  Speeds are single-thread:
``MB/s`` = raw pixel megabytes (10**6 bytes of Bits-Allocated samples) per
second of wall time, best of ``repeat`` runs of each image.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom

from gateway.codecs.base import FrameInfo
from gateway.kernelcache import refresh

REPO = Path(__file__).resolve().parent.parent
refresh()  # as the command line and the tests do: no kernel compiled from older source is measured


def _corpus_path() -> Path:
    """Where the corpus is looked for: $GATEWAY_CORPUS, else ../shared/corpus beside the checkout."""
    env = os.environ.get("GATEWAY_CORPUS")
    return Path(env) if env else REPO.parent / "shared" / "corpus"


def corpus_dir() -> Path:
    path = _corpus_path()
    if not (path / "MANIFEST.csv").is_file():
        sys.exit(f"corpus not found at {path}: set GATEWAY_CORPUS to a folder holding MANIFEST.csv")
    return path


@dataclass
class Item:
    """One corpus image, decoded to frames."""

    path: str
    folder: str
    info: FrameInfo
    frames: list[np.ndarray]

    @property
    def raw_bytes(self) -> int:
        return self.info.frame_bytes * len(self.frames)


@dataclass
class Entry:
    """A codec under test: encode one frame to bytes, decode them back."""

    name: str
    encode: Callable[[np.ndarray, FrameInfo], bytes]
    decode: Callable[[bytes, FrameInfo], np.ndarray]
    supports: Callable[[FrameInfo], bool] = lambda info: True


@dataclass
class _Tally:
    raw: int = 0
    compressed: int = 0
    enc_s: float = 0.0
    dec_s: float = 0.0
    images: int = 0
    skipped: int = 0
    errors: list[str] = field(default_factory=list)


def load_corpus(root: Path | None = None, folders: Sequence[str] = ()) -> list[Item]:
    """Decode every corpus image listed in MANIFEST.csv (optionally some folders only)."""
    import csv

    root = root or corpus_dir()
    items = []
    with open(root / "MANIFEST.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            folder = row["path"].split("/", 1)[0]
            if folders and folder not in folders:
                continue
            items.append(_dicom_item(root / row["path"], row["path"], folder))
    return items


def _dicom_item(path: Path, name: str, folder: str) -> Item:
    """Every frame of one DICOM file, decoded by pydicom."""
    return _dataset_item(pydicom.dcmread(path), name, folder)


def _dataset_item(ds: pydicom.Dataset, name: str, folder: str) -> Item:
    """Every frame of a dataset, decoded by pydicom."""
    from gateway.pipeline.pixels import frame_info, iter_frames

    return Item(name, folder, frame_info(ds), list(iter_frames(ds)))


IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".bmp", ".ppm", ".pgm", ".webp")
DICOM_SUFFIXES = (".dcm",)


def _corpus_hashes() -> set[str]:
    """The pixel hashes of the corpus's MANIFEST.csv (empty, and said so, without a corpus)."""
    import csv

    manifest = _corpus_path() / "MANIFEST.csv"
    if not manifest.is_file():
        print(f"  no corpus at {manifest.parent}: images the corpus holds cannot be told apart", file=sys.stderr)
        return set()
    with manifest.open(newline="") as f:
        return {row["sha256_of_pixel_array"] for row in csv.DictReader(f)}


def _unseen_item(file: Path, corpus: set[str], seen: set[str]) -> tuple[Item | None, str]:
    """A DICOM file as an image the codecs have not been built on, in a folder named by its
    modality, or None and why it is left out: pixels decoded from a lossy stream (a lossy
    transfer syntax or Lossy Image Compression 01), pixels the corpus holds (its MANIFEST's
    hashes, of the little-endian pixel bytes) or pixels already taken from another file."""
    import hashlib

    from gateway.dicom import uids

    ds = pydicom.dcmread(file)
    syntax = str(ds.file_meta.TransferSyntaxUID)
    if not uids.is_lossless(syntax) or str(ds.get("LossyImageCompression", "00")) == "01":
        return None, f"lossy source ({syntax})"
    array = np.ascontiguousarray(ds.pixel_array)
    digest = hashlib.sha256(array.astype(array.dtype.newbyteorder("<")).tobytes()).hexdigest()
    if digest in corpus:
        return None, "in the corpus"
    if digest in seen:
        return None, "the same pixels as another file"
    seen.add(digest)
    return _dataset_item(ds, str(file), str(ds.get("Modality", "") or "OT")), ""


def load_images(paths: Sequence[str], unseen: bool = False) -> list[Item]:
    """Images outside the corpus, from image files (lossless formats; folders are searched):
    8- or 16-bit grey or RGB (an alpha channel is dropped), one frame each, or DICOM files
    (``.dcm``, every frame, as the corpus is read; files whose pixels pydicom cannot decode are
    left out, and said so), in a folder named by the file's parent folder.  With `unseen`, only
    DICOM files whose pixels are lossless, not in the corpus and not repeated
    (:func:`_unseen_item`), in a folder named by their modality."""
    import imagecodecs

    files = []
    for path in map(Path, paths):
        files += sorted(f for f in path.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES + DICOM_SUFFIXES) \
            if path.is_dir() else [path]
    items = []
    corpus: set[str] = _corpus_hashes() if unseen else set()
    seen: set[str] = set()
    for file in files:
        if file.suffix.lower() in DICOM_SUFFIXES:
            try:
                if unseen:
                    item, why = _unseen_item(file, corpus, seen)
                    if item is None:
                        print(f"  {file}: left out ({why})", file=sys.stderr)
                        continue
                    items.append(item)
                else:
                    items.append(_dicom_item(file, str(file), file.parent.name))
            except Exception as exc:  # a file the benchmark cannot use: say so, go on with the others
                print(f"  {file}: left out ({type(exc).__name__}: {exc})", file=sys.stderr)
            continue
        if unseen:
            continue
        array = np.asarray(imagecodecs.imread(file))
        if array.ndim == 3 and array.shape[2] in (2, 4):
            array = array[..., :-1]
        if array.ndim == 3 and array.shape[2] == 1:
            array = array[..., 0]
        if array.dtype not in (np.uint8, np.uint16) or array.ndim not in (2, 3) or array.ndim == 3 and array.shape[2] != 3:
            continue
        array = np.ascontiguousarray(array)
        samples = 3 if array.ndim == 3 else 1
        bits = 8 * array.dtype.itemsize
        info = FrameInfo(rows=array.shape[0], columns=array.shape[1], samples_per_pixel=samples, bits_allocated=bits,
                         bits_stored=bits, photometric_interpretation="RGB" if samples == 3 else "MONOCHROME2")
        items.append(Item(str(file), file.parent.name, info, [array]))
    return items


def _best_time(function, repeat: int):
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - start)
    return best, result


def _warm_up(entry: Entry, items: Sequence[Item]) -> None:
    """JIT compilation and library loading outside the timed region: one image of
    each kind, since compiled kernels are specialised by sample count, sample
    size and signedness."""
    kinds = set()
    for item in items:
        info = item.info
        kind = (info.samples_per_pixel, info.bits_allocated, info.pixel_representation,
                info.bits_stored < info.bits_allocated)
        if kind not in kinds and entry.supports(info):
            kinds.add(kind)
            entry.decode(entry.encode(item.frames[0], info), info)


def _measure_item(entry: Entry, item: Item, tally: _Tally, verify: bool, repeat: int) -> None:
    if not entry.supports(item.info):
        tally.skipped += 1
        return
    enc_s = dec_s = 0.0
    size = 0
    try:
        for frame in item.frames:
            t, data = _best_time(lambda: entry.encode(frame, item.info), repeat)
            enc_s += t
            size += len(data)
            t, back = _best_time(lambda: entry.decode(data, item.info), repeat)
            dec_s += t
            if verify and not np.array_equal(np.asarray(back).reshape(frame.shape), frame):
                raise AssertionError("round trip differs")
    except Exception as exc:  # a benchmark reports failures and goes on
        tally.errors.append(f"{item.path}: {type(exc).__name__}: {exc}")
        return
    tally.raw += item.raw_bytes
    tally.compressed += size
    tally.enc_s += enc_s
    tally.dec_s += dec_s
    tally.images += 1


def measure(entry: Entry, items: Sequence[Item], *, verify: bool = True, repeat: int = 1) -> dict[str, _Tally]:
    """Encode and decode every frame of `items` with `entry`; tallies per folder and 'ALL'."""
    return measure_all([entry], items, verify=verify, repeat=repeat)[entry.name]


def _totals(tallies: dict[str, _Tally]) -> dict[str, _Tally]:
    total = _Tally()
    for tally in list(tallies.values()):
        total.raw += tally.raw
        total.compressed += tally.compressed
        total.enc_s += tally.enc_s
        total.dec_s += tally.dec_s
        total.images += tally.images
        total.skipped += tally.skipped
        total.errors += tally.errors
    tallies["ALL"] = total
    return tallies


def measure_all(entries: Sequence[Entry], items: Sequence[Item], *, verify: bool = True,
                repeat: int = 1) -> dict[str, dict[str, _Tally]]:
    """Every entry on every item, interleaved: image by image, each entry in turn, so that
    the load of a noisy machine falls on all entries alike."""
    for entry in entries:
        _warm_up(entry, items)
    tallies: dict[str, dict[str, _Tally]] = {e.name: defaultdict(_Tally) for e in entries}
    for item in items:
        for entry in entries:
            _measure_item(entry, item, tallies[entry.name][item.folder], verify, repeat)
    return {name: _totals(t) for name, t in tallies.items()}


def format_table(results: dict[str, dict[str, _Tally]], title: str = "") -> str:
    """A Markdown table: one row per (folder, codec), folders in order, ALL last."""
    folders = sorted({f for tallies in results.values() for f in tallies if f != "ALL"}) + ["ALL"]
    lines = []
    if title:
        lines.append(f"### {title}\n")
    lines.append("| folder | codec | images | raw MB | ratio | encode MB/s | decode MB/s |")
    lines.append("|---|---|---:|---:|---:|---:|---:|")
    for folder in folders:
        for name, tallies in results.items():
            t = tallies.get(folder)
            if t is None or t.images == 0:
                note = f"unsupported ({t.skipped})" if t and t.skipped else "-"
                lines.append(f"| {folder} | {name} | 0 | - | {note} | - | - |")
                continue
            ratio = t.raw / t.compressed if t.compressed else float("inf")
            enc = t.raw / 1e6 / t.enc_s if t.enc_s else float("inf")
            dec = t.raw / 1e6 / t.dec_s if t.dec_s else float("inf")
            skipped = f" (+{t.skipped} n/a)" if t.skipped else ""
            lines.append(
                f"| {folder} | {name} | {t.images}{skipped} | {t.raw / 1e6:.1f} | {ratio:.3f} | {enc:.1f} | {dec:.1f} |"
            )
    errors = [f"- {name}: {e}" for name, tallies in results.items() for e in tallies["ALL"].errors]
    if errors:
        lines.append("\nFailures (excluded from the rows above):")
        lines.extend(errors[:50])
    return "\n".join(lines)


def run(entries: Sequence[Entry], items: Sequence[Item], *, title: str = "", verify: bool = True, repeat: int = 1) -> str:
    """Measure every entry on the same items and print (and return) the table."""
    start = time.perf_counter()
    results = measure_all(entries, items, verify=verify, repeat=repeat)
    print(f"  {len(entries)} codecs, {len(items)} images: {time.perf_counter() - start:.1f} s", file=sys.stderr)
    table = format_table(results, title)
    print(table)
    return table


def arguments(description: str, extra: Callable[[argparse.ArgumentParser], None] | None = None) -> argparse.Namespace:
    """Common command line: --folders, --repeat, --noverify, --only (entry names); `extra` adds a script's own."""
    parser = argparse.ArgumentParser(description=description)
    if extra is not None:
        extra(parser)
    parser.add_argument("--folders", nargs="*", default=(), help="corpus folders to use (default: all)")
    parser.add_argument("--repeat", type=int, default=1, help="time each operation N times, keep the best")
    parser.add_argument("--noverify", action="store_true", help="skip the round-trip check")
    parser.add_argument("--only", nargs="*", default=(), help="entry names to run (default: all)")
    parser.add_argument("--images", nargs="*", default=(),
                        help="image files or folders to use instead of the corpus (PNG, TIFF, ...)")
    parser.add_argument("--unseen", action="store_true",
                        help="with --images: only DICOM files with lossless pixels the corpus does not hold, "
                             "each pixel data once, in folders by modality")
    return parser.parse_args()
