"""Our HTJ2K lossless codec beside OpenJPH and beside OpenJPEG's classic JPEG 2000.

Same corpus images for every entry, every round trip verified, each entry
timed in several interleaved rounds (entry A, B, C, then A, B, C again...)
and the best time of each image kept, so that load from other processes
hits every entry alike.  Rows:

* ours htj2k (the .202 form: RPCL, TLM, 64 x 64 code-blocks, levels so the
  lowest resolution is at most 64 x 64), one thread;
* OpenJPH through imagecodecs (``htj2k_encode(reversible=True)``, its
  library in this process, so no process start is timed; OpenJPH has no
  threads), with the same number of decomposition levels and its default
  64 x 64 code-blocks, RPCL;
* OpenJPEG's classic JPEG 2000 through imagecodecs, one thread, the same
  levels;
* on frames larger than 1 MB only: ours with one and two threads beside
  OpenJPH;
* where our one-thread time goes: the HT block coder, the wavelet, tier 2,
  code-block geometry and marker segments, beside OpenJPH's totals.

Images whose values use bits above Bits Stored are left out for every
entry (the gateway passes them through).

Run: ``python -m benchmarks.bench_htj2k [--rounds 3] [--folders ...] [--only single two-threads stages]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np

from benchmarks.bench_jpeg2000 import _timed_stages, interleaved, openjpeg, size_line
from benchmarks.harness import Entry, Item, format_table, load_corpus
from gateway.codecs.base import FrameInfo
from gateway.codecs.htj2k import codec as htj2k
from gateway.pipeline.pixels import high_bits_used

LARGE = 1 << 20


def _supports(info: FrameInfo) -> bool:
    return htj2k.supports(info) is None


def ours(threads: int) -> Entry:
    parallel = threads > 1
    return Entry(
        f"ours htj2k ({threads} thread{'s' if parallel else ''})",
        lambda frame, info: htj2k.encode(frame, info, rpcl=True, parallel=parallel),
        lambda data, info: htj2k.decode(data, info, parallel=parallel),
        _supports,
    )


def openjph() -> Entry:
    import imagecodecs

    def encode(frame: np.ndarray, info: FrameInfo) -> bytes:
        levels = htj2k.levels_for(info.rows, info.columns, rpcl=True)
        shaped = frame.reshape(info.rows, info.columns, -1) if info.samples_per_pixel == 3 else frame
        return imagecodecs.htj2k_encode(shaped, reversible=True, resolutions=levels + 1)

    def decode(data: bytes, info: FrameInfo) -> np.ndarray:
        return np.asarray(imagecodecs.htj2k_decode(data)).reshape(info.shape).astype(info.dtype)

    return Entry("OpenJPH (imagecodecs, 1 thread)", encode, decode, _supports)


BLOCKS = "HT block coder (code-blocks)"
REST = "rest (Python glue, level shift, colour, checks)"


def _timed(function: Callable, spent: Counter) -> Callable:
    def call(*args, **kwargs):
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            spent[BLOCKS] += time.perf_counter() - start
    return call


def stages(items: Sequence[Item], rounds: int) -> str:
    """Where one-thread encoding and decoding spend their time, per stage (best round), beside OpenJPH's totals.

    The shared stages (wavelet, tier 2, geometry, marker segments) are timed
    as in ``bench_jpeg2000``; the block coder through a timed copy of the
    codec's ``CODER``.
    """
    frames = [(f, it.info) for it in items for f in it.frames]
    raw = sum(f.nbytes for f, _ in frames)
    peer = openjph()
    coded = [htj2k.encode(f, info, rpcl=True, parallel=False) for f, info in frames]
    theirs = [peer.encode(f, info) for f, info in frames]
    best: dict[str, dict[str, float]] = {"encode": {}, "decode": {}}
    peer_best = {"encode": float("inf"), "decode": float("inf")}
    original = htj2k.CODER
    for _ in range(rounds):
        for direction in ("encode", "decode"):
            spent: Counter = Counter()
            total = 0.0
            htj2k.CODER = dataclasses.replace(original, encode_blocks=_timed(original.encode_blocks, spent),
                                              decode_blocks=_timed(original.decode_blocks, spent))
            try:
                with _timed_stages(spent):
                    for k, (frame, info) in enumerate(frames):
                        start = time.perf_counter()
                        if direction == "encode":
                            htj2k.encode(frame, info, rpcl=True, parallel=False)
                        else:
                            htj2k.decode(coded[k], info, parallel=False)
                        total += time.perf_counter() - start
            finally:
                htj2k.CODER = original
            spent[REST] = total - sum(spent.values())
            spent["total"] = total
            if total < best[direction].get("total", float("inf")):
                best[direction] = dict(spent)
            start = time.perf_counter()
            for k, (frame, info) in enumerate(frames):
                if direction == "encode":
                    peer.encode(frame, info)
                else:
                    peer.decode(theirs[k], info)
            peer_best[direction] = min(peer_best[direction], time.perf_counter() - start)
    enc, dec = best["encode"], best["decode"]
    names = [BLOCKS] + [n for n in dict.fromkeys(list(enc) + list(dec)) if n not in (BLOCKS, REST, "total")]
    lines = [f"### Where our one-thread time goes ({len(frames)} frames, {raw / 1e6:.1f} MB)\n",
             "| stage | encode s | encode % | decode s | decode % |", "|---|---:|---:|---:|---:|"]
    for name in names + [REST, "total"]:
        e, d = enc.get(name, 0.0), dec.get(name, 0.0)
        lines.append(f"| {name} | {e:.3f} | {100 * e / enc['total']:.0f} | {d:.3f} | {100 * d / dec['total']:.0f} |")
    lines.append(f"| OpenJPH (imagecodecs, 1 thread), total | {peer_best['encode']:.3f} | "
                 f"{100 * peer_best['encode'] / enc['total']:.0f} | {peer_best['decode']:.3f} | "
                 f"{100 * peer_best['decode'] / dec['total']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folders", nargs="*", default=(), help="corpus folders to use (default: all)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (best time kept)")
    parser.add_argument("--noverify", action="store_true", help="skip the round-trip check")
    parser.add_argument("--only", nargs="*", default=(), help="tables to run: single, two-threads, stages")
    args = parser.parse_args()
    items = load_corpus(folders=args.folders)
    kept = [it for it in items if not any(high_bits_used(f, it.info) for f in it.frames)]
    print(f"{len(kept)} images, {sum(i.raw_bytes for i in kept) / 1e6:.1f} MB of pixels "
          f"({len(items) - len(kept)} with data above Bits Stored left out), {args.rounds} interleaved rounds\n")
    if not args.only or "single" in args.only:
        entries = [ours(1), openjph(), openjpeg(1)]
        results = interleaved(entries, kept, args.rounds, not args.noverify)
        print(format_table(results, "HTJ2K lossless and classic JPEG 2000, one thread"))
        print()
        print(size_line(results, entries[0].name, entries[1].name))
        print(size_line(results, entries[0].name, entries[2].name))
        print()
    if not args.only or "two-threads" in args.only:
        large = [it for it in kept if it.info.frame_bytes > LARGE]
        entries = [ours(1), ours(2), openjph()]
        results = interleaved(entries, large, args.rounds, not args.noverify)
        print(format_table(results, f"frames larger than 1 MB ({len(large)} images): one and two threads"))
        print()
    if not args.only or "stages" in args.only:
        print(stages(kept, args.rounds))


if __name__ == "__main__":
    main()
