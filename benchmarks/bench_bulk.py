"""Throughput of bulk ``compress``: Dask with 1 and 2 local workers against a single-process loop.

Three inputs: the shared corpus, a generated set of ``--generated-mb``
megabytes (512x512 12-bit CT-like slices, smooth anatomy plus noise), and a
set of tiny images (16x16) on which the time per file is mostly overhead.
Each is compressed, verified, to JPEG-LS and to our private syntax by:

* ``loop``: one process calling the per-file task in a plain loop (no manifest, no Dask);
* ``bulk, no Dask``: the bulk driver in this process (``--workers 0``): the loop plus the manifest;
* ``dask 1w`` / ``dask 2w``: the bulk driver on a ``LocalCluster`` of 1 or 2 worker processes
  (1 thread each), started and warmed up once before timing (startup is reported apart).

Rounds are interleaved (every engine once per round, in turn), and the best
round is kept, so that a noisy machine's load falls on all alike.  Output
folders are deleted after every run.  ``MB/s`` counts input file bytes;
``efficiency`` is the speed of N workers over N times the speed of one; the
overhead per file is (``dask 1w`` time - ``loop`` time) / files on the tiny set::

    python benchmarks/bench_bulk.py                       # corpus, 2 GB generated, tiny
    python benchmarks/bench_bulk.py --generated-mb 1000 --rounds 2
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from gateway.bulk import BulkOptions, run  # noqa: E402
from gateway.bulk.plan import walk  # noqa: E402
from gateway.bulk.task import compress_file  # noqa: E402

CODECS = {"JPEG-LS": "1.2.840.10008.1.2.4.80", "gwl": "2.25.98736700971092333592611877631001549337"}


def corpus_dir() -> Path | None:
    env = os.environ.get("GATEWAY_CORPUS")
    path = Path(env) if env else REPO.parent / "shared" / "corpus"
    return path if (path / "MANIFEST.csv").is_file() else None


def generate(folder: Path, megabytes: float, size: int, seed: int = 0, count: int | None = None) -> Path:
    """CT-like 12-bit slices of `size` x `size` until `megabytes` of files (or `count` files) are written."""
    from pydicom.data import get_testdata_file
    from pydicom import dcmread
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    template = dcmread(get_testdata_file("CT_small.dcm"))
    for keyword in ("SmallestImagePixelValue", "LargestImagePixelValue"):
        if keyword in template:
            del template[keyword]
    template.Rows = template.Columns = size
    template.BitsAllocated, template.BitsStored, template.HighBit, template.PixelRepresentation = 16, 12, 11, 0
    template.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    template.set_original_encoding(False, True, template.original_character_set)
    y, x = np.mgrid[0:size, 0:size]
    body = ((x - size / 2) ** 2 + (y - size / 2) ** 2) < (0.42 * size) ** 2
    written, index, limit = 0, 0, megabytes * 1e6
    series = generate_uid()
    while (written < limit) if count is None else (index < count):
        anatomy = 1000 + 300 * np.sin((x + 3 * index) / 17.0) * np.cos(y / 23.0) + 200 * body
        pixels = np.clip(anatomy * body + rng.normal(0, 12, (size, size)), 0, 4095).astype(np.uint16)
        template.PixelData = pixels.tobytes()
        if index % 200 == 0:
            series = generate_uid()
        template.SeriesInstanceUID = series
        template.SOPInstanceUID = template.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        template.InstanceNumber = index + 1
        path = folder / f"s{index // 200:04d}" / f"{index:06d}.dcm"
        path.parent.mkdir(exist_ok=True)
        template.save_as(path, enforce_file_format=True)
        written += path.stat().st_size
        index += 1
    return folder


def loop(source: Path, output: Path, target: str) -> None:
    """The baseline: one process, a plain loop over the files, no manifest."""
    for item in walk(source):
        result = compress_file(str(source), str(output), item.rel, target)
        if result["outcome"] == "failed":
            raise SystemExit(f"{item.rel}: {result['reason']}")


def bulk(source: Path, output: Path, target: str, scheduler: str | None) -> None:
    report = run(BulkOptions(source=source, output=output, target=target, scheduler=scheduler,
                             workers=None if scheduler else 0), progress=False, note=lambda text: None)
    if report.counts["failed"]:
        raise SystemExit(f"{report.counts['failed']} file(s) failed: {report.failures[:3]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--generated-mb", type=float, default=2000, help="size of the generated set (2000)")
    parser.add_argument("--tiny", type=int, default=400, help="tiny files for the per-file overhead (400)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--codecs", default="JPEG-LS,gwl")
    parser.add_argument("--sets", default="corpus,generated,tiny")
    parser.add_argument("--engines", default="loop,bulk, no Dask,dask 1w,dask 2w".replace(", ", "|"),
                        help="comma-separated subset of: loop, bulk|no Dask, dask 1w, dask 2w")
    parser.add_argument("--workdir", type=Path, default=None, help="where to generate and write (a temp folder)")
    args = parser.parse_args()

    from dask.distributed import LocalCluster

    work = Path(tempfile.mkdtemp(prefix="bench-bulk-", dir=args.workdir))
    try:
        sets: dict[str, Path] = {}
        wanted = args.sets.split(",")
        if "corpus" in wanted and corpus_dir() is not None:
            sets["corpus"] = corpus_dir()
        if "generated" in wanted:
            started = time.perf_counter()
            sets[f"generated {args.generated_mb / 1000:g} GB"] = generate(work / "gen", args.generated_mb, 512)
            print(f"generated {args.generated_mb:g} MB in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        if "tiny" in wanted:
            sets["tiny 16x16"] = generate(work / "tiny", 0, 16, seed=1, count=args.tiny)
        warm = generate(work / "warm", 2, 128, seed=2)

        clusters = {}
        for workers in (1, 2):
            started = time.perf_counter()
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                                   dashboard_address=None)
            clusters[workers] = cluster
            print(f"LocalCluster of {workers} worker(s) up in {time.perf_counter() - started:.1f} s",
                  file=sys.stderr)
        engines = {
            "loop": lambda s, o, t: loop(s, o, t),
            "bulk, no Dask": lambda s, o, t: bulk(s, o, t, None),
            "dask 1w": lambda s, o, t: bulk(s, o, t, clusters[1].scheduler_address),
            "dask 2w": lambda s, o, t: bulk(s, o, t, clusters[2].scheduler_address),
        }
        chosen = [name.replace("|", ", ") for name in args.engines.split(",")]
        engines = {name: engine for name, engine in engines.items() if name in chosen or name in ("loop", "dask 1w")}
        for codec in args.codecs.split(","):  # warm-up: numba caches loaded in every process
            for name, engine in engines.items():
                engine(warm, work / "out-warm", CODECS[codec])
                shutil.rmtree(work / "out-warm")

        best: dict[tuple[str, str, str], float] = {}
        for round_ in range(args.rounds):
            for set_name, source in sets.items():
                for codec in args.codecs.split(","):
                    for name, engine in engines.items():
                        out = work / "out"
                        started = time.perf_counter()
                        engine(source, out, CODECS[codec])
                        seconds = time.perf_counter() - started
                        shutil.rmtree(out)
                        key = (set_name, codec, name)
                        best[key] = min(best.get(key, float("inf")), seconds)
                        print(f"round {round_ + 1} {set_name} {codec} {name}: {seconds:.2f} s", file=sys.stderr)
        for cluster in clusters.values():
            cluster.close()

        print(f"\nbulk compress, verified, best of {args.rounds} interleaved round(s); "
              f"{os.cpu_count()} cores shared with other jobs (noisy machine)\n")
        print("| set | files | MB | codec | engine | s | files/s | MB/s | vs loop | efficiency |")
        print("|---|---:|---:|---|---|---:|---:|---:|---:|---:|")
        overheads = []
        for set_name, source in sets.items():
            files = [item for item in walk(source)]
            count, megabytes = len(files), sum(item.size for item in files) / 1e6
            for codec in args.codecs.split(","):
                base, one = best[(set_name, codec, "loop")], best[(set_name, codec, "dask 1w")]
                for name in engines:
                    seconds = best[(set_name, codec, name)]
                    efficiency = ""
                    if name == "dask 2w":
                        efficiency = f"{one / (2 * seconds):.0%}"
                    elif name == "dask 1w":
                        efficiency = "100%"
                    print(f"| {set_name} | {count} | {megabytes:.0f} | {codec} | {name} | {seconds:.2f} | "
                          f"{count / seconds:.1f} | {megabytes / seconds:.1f} | {base / seconds:.2f} | {efficiency} |")
                if set_name.startswith("tiny"):
                    manifest = best.get((set_name, codec, "bulk, no Dask"))
                    overheads.append((codec, (one - base) / count * 1e3,
                                      None if manifest is None else (manifest - base) / count * 1e3))
        for codec, dask_ms, manifest_ms in overheads:
            print(f"\noverhead per file ({codec}, tiny files): Dask 1 worker {dask_ms:.1f} ms over the loop"
                  + ("" if manifest_ms is None else f" (the manifest alone: {manifest_ms:.1f} ms)"))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
