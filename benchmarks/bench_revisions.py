"""Benchmark two revisions of the private codec against each other, interleaved.

A change meant only to make the codec faster must leave every stream as it
was.  This benchmark checks both: each revision is extracted from git into
a folder of its own (``git archive``), and the two run alternately in
separate processes, several rounds, each round coding every corpus image
with that revision's ``private.encode`` (frames of a multi-frame image in
order, each referencing the one before) and decoding it again, every round
trip verified.  It prints per round and revision the ratio, the encode and
decode MB/s (processor time of the process, one thread, version 2's
stripes one after the other) and a hash of every coded stream; then the
best round of each, and whether the streams are identical.  The machine's
load changes from minute to minute, so only rounds run side by side compare.

Each revision's numba cache fills in a warm-up run before the rounds, and
each process codes the first two frames of every image once, untimed,
before it times anything (a kernel's first call in a process loads it from
the cache).  Revisions older than this benchmark run as well (it needs
only ``benchmarks/harness.py`` and ``gateway.codecs.private`` in them).

    python benchmarks/bench_revisions.py OLD NEW [--folders CT MR] [--rounds N] [--version 1|2]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _child(tree: str, folders: list[str], version: int) -> None:
    """Code the corpus with the codec of `tree`; print one JSON line of totals."""
    sys.path.insert(0, tree)
    import numpy as np

    from benchmarks.harness import load_corpus
    from gateway.codecs import private

    if not Path(private.__file__).resolve().is_relative_to(Path(tree).resolve()):
        raise RuntimeError(f"imported {private.__file__}, not the codec of {tree}")
    private.STRIPE_THREADS = 1
    items = [item for item in load_corpus(folders=folders) if private.supports(item.info) is None]
    for item in items:  # untimed: numba loads each kernel from its cache on the first call in a process
        reference = None
        for frame in item.frames[:2]:
            private.decode(private.encode(frame, item.info, reference, version=version), item.info)
            reference = frame
    digest = hashlib.sha256()
    raw = coded = 0
    encode_s = decode_s = 0.0
    for item in items:
        reference = None
        for frame in item.frames:
            start = time.process_time()
            data = private.encode(frame, item.info, reference, version=version)
            encode_s += time.process_time() - start
            start = time.process_time()
            back = private.decode(data, item.info)
            decode_s += time.process_time() - start
            if not np.array_equal(np.asarray(back).reshape(frame.shape), frame):
                raise AssertionError(f"{item.path}: the round trip differs")
            digest.update(data)
            raw += frame.nbytes
            coded += len(data)
            reference = frame
    print(json.dumps({"raw": raw, "coded": coded, "encode_s": encode_s, "decode_s": decode_s,
                      "hash": digest.hexdigest()[:16]}))


def _run(tree: Path, folders: list[str], version: int, corpus: Path) -> dict:
    env = dict(os.environ, DICOM_GATEWAY_NO_AUTOLOAD="1", GATEWAY_CORPUS=str(corpus))
    command = [sys.executable, __file__, "--child", str(tree), "--version", str(version), "--folders", *folders]
    out = subprocess.run(command, env=env, capture_output=True, text=True, cwd=tree)
    if out.returncode != 0:
        sys.exit(f"{tree.name}: the codec run failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _extract(revision: str, into: Path) -> Path:
    tree = into / revision.replace("/", "_")
    tree.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", revision], capture_output=True)
    if archive.returncode != 0:
        sys.exit(f"git archive {revision}: {archive.stderr.decode(errors='replace').strip()}")
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    return tree


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("revisions", nargs="*", help="two git revisions, the old one first")
    parser.add_argument("--folders", nargs="*", default=[])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--version", type=int, default=2)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.folders, args.version)
        return
    if len(args.revisions) != 2 or args.revisions[0] == args.revisions[1]:
        parser.error("name two different revisions")
    sys.path.insert(0, str(ROOT))
    from benchmarks.harness import corpus_dir

    corpus = corpus_dir()
    with tempfile.TemporaryDirectory() as scratch:
        trees = {revision: _extract(revision, Path(scratch)) for revision in args.revisions}
        for tree in trees.values():
            _run(tree, args.folders, args.version, corpus)  # compile into the tree's numba cache
        print("| round | revision | ratio | encode MB/s | decode MB/s | streams |")
        print("|---:|---|---:|---:|---:|---|")
        best: dict[str, list[float]] = {revision: [0.0, 0.0] for revision in trees}
        hashes: dict[str, set[str]] = {revision: set() for revision in trees}
        for round_ in range(1, args.rounds + 1):
            for revision, tree in trees.items():
                row = _run(tree, args.folders, args.version, corpus)
                encode, decode = row["raw"] / row["encode_s"] / 1e6, row["raw"] / row["decode_s"] / 1e6
                best[revision] = [max(best[revision][0], encode), max(best[revision][1], decode)]
                hashes[revision].add(row["hash"])
                print(f"| {round_} | {revision} | {row['raw'] / row['coded']:.4f} | {encode:.1f} | {decode:.1f} "
                      f"| {row['hash']} |", flush=True)
        old, new = args.revisions
        for revision in trees:
            print(f"| best | {revision} | | {best[revision][0]:.1f} | {best[revision][1]:.1f} | |")
        print(f"\n{new} against {old}: encode {100 * (best[new][0] / best[old][0] - 1):+.1f} %, "
              f"decode {100 * (best[new][1] / best[old][1] - 1):+.1f} %; streams "
              + ("identical" if hashes[old] == hashes[new] and len(hashes[old]) == 1 else "DIFFER"))


if __name__ == "__main__":
    main()
