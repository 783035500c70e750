"""Our JPEG 2000 lossless codec beside OpenJPEG, and beside JPEG-LS (ours and CharLS).

Same corpus images for every entry, every round trip verified, each entry
timed in several interleaved rounds (entry A, B, C, then A, B, C again...)
and the best time of each image kept, so that load from other processes
hits every entry alike.  Rows:

* ours jpeg2000, one thread;
* OpenJPEG through imagecodecs (``jpeg2k_encode(level=0, reversible=True,
  numthreads=1)``, J2K codestream, the same number of decomposition levels
  as ours, its default 64 x 64 code-blocks), decoded with ``numthreads=1``;
* ours jpeg-ls and CharLS (pyjpegls), for the ratio and speed of the other
  lossless family;
* on frames larger than 1 MB only: ours and OpenJPEG with two threads.

Images whose values use bits above Bits Stored are left out for every
entry (the gateway passes them through).

Run: ``python -m benchmarks.bench_jpeg2000 [--rounds 3] [--folders ...] [--only ...]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

import numpy as np

from benchmarks.bench_standard import _from_pattern, _pattern, jpegls_entries
from benchmarks.harness import Entry, Item, _Tally, format_table, load_corpus, measure
from gateway.codecs.base import FrameInfo
from gateway.codecs.jpeg2000 import codec as j2k
from gateway.pipeline.pixels import high_bits_used

LARGE = 1 << 20


def _supports(info: FrameInfo) -> bool:
    return j2k.supports(info) is None


def ours(threads: int) -> Entry:
    parallel = threads > 1
    return Entry(
        f"ours jpeg2000 ({threads} thread{'s' if parallel else ''})",
        lambda frame, info: j2k.encode(frame, info, parallel=parallel),
        lambda data, info: j2k.decode(data, info, parallel=parallel),
        _supports,
    )


def openjpeg(threads: int) -> Entry:
    import imagecodecs

    def encode(frame: np.ndarray, info: FrameInfo) -> bytes:
        data = _pattern(frame, info) if info.bits_stored < info.bits_allocated else frame
        if info.signed:
            data = frame  # OpenJPEG codes signed samples itself
        levels = j2k.levels_for(info.rows, info.columns)
        return imagecodecs.jpeg2k_encode(
            data.reshape(info.rows, info.columns, -1) if info.samples_per_pixel == 3 else data,
            level=0, reversible=True, codecformat="J2K", bitspersample=info.bits_stored,
            resolutions=levels + 1, numthreads=threads, mct=info.samples_per_pixel == 3,
        )

    def decode(data: bytes, info: FrameInfo) -> np.ndarray:
        decoded = np.asarray(imagecodecs.jpeg2k_decode(data, numthreads=threads))
        if info.signed:
            return decoded.reshape(info.shape).astype(info.dtype)
        return _from_pattern(decoded, info)

    return Entry(f"OpenJPEG (imagecodecs, {threads} thread{'s' if threads > 1 else ''})", encode, decode, _supports)


def _best(rounds: list[dict[str, _Tally]]) -> dict[str, _Tally]:
    """Per folder: sizes of the first round (all equal), the smallest time of any round."""
    best = {}
    for folder, first in rounds[0].items():
        tally = _Tally(first.raw, first.compressed, first.enc_s, first.dec_s, first.images, first.skipped,
                       list(first.errors))
        for other in rounds[1:]:
            t = other[folder]
            if t.images == tally.images:
                tally.enc_s = min(tally.enc_s, t.enc_s)
                tally.dec_s = min(tally.dec_s, t.dec_s)
        best[folder] = tally
    return best


def interleaved(entries: Sequence[Entry], items: Sequence[Item], rounds: int, verify: bool) -> dict[str, dict]:
    """Measure every entry `rounds` times, alternating entries; best time per folder."""
    collected: dict[str, list[dict[str, _Tally]]] = {e.name: [] for e in entries}
    for number in range(rounds):
        for entry in entries:
            start = time.perf_counter()
            collected[entry.name].append(measure(entry, items, verify=verify))
            print(f"  round {number + 1}: {entry.name}: {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return {name: _best(results) for name, results in collected.items()}


def size_line(results: dict[str, dict[str, _Tally]], ours_name: str, peer: str) -> str:
    a, b = results[ours_name]["ALL"], results[peer]["ALL"]
    return (f"{ours_name}: {a.compressed:,} bytes; {peer}: {b.compressed:,} bytes "
            f"({a.compressed / b.compressed:.4f} x) on {a.images} images")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folders", nargs="*", default=(), help="corpus folders to use (default: all)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (best time kept)")
    parser.add_argument("--noverify", action="store_true", help="skip the round-trip check")
    parser.add_argument("--only", nargs="*", default=(), help="tables to run: single, two-threads")
    args = parser.parse_args()
    items = load_corpus(folders=args.folders)
    kept = [it for it in items if not any(high_bits_used(f, it.info) for f in it.frames)]
    print(f"{len(kept)} images, {sum(i.raw_bytes for i in kept) / 1e6:.1f} MB of pixels "
          f"({len(items) - len(kept)} with data above Bits Stored left out), {args.rounds} interleaved rounds\n")
    if not args.only or "single" in args.only:
        entries = [ours(1), openjpeg(1), *jpegls_entries()]
        results = interleaved(entries, kept, args.rounds, not args.noverify)
        print(format_table(results, "JPEG 2000 lossless and JPEG-LS, one thread"))
        print()
        print(size_line(results, entries[0].name, entries[1].name))
        print()
    if not args.only or "two-threads" in args.only:
        large = [it for it in kept if it.info.frame_bytes > LARGE]
        entries = [ours(1), ours(2), openjpeg(1), openjpeg(2)]
        results = interleaved(entries, large, args.rounds, not args.noverify)
        print(format_table(results, f"frames larger than 1 MB ({len(large)} images): one and two threads"))


if __name__ == "__main__":
    main()
