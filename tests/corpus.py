"""Access to the shared corpus of real scanner images.

The corpus lives outside the repository: ``$GATEWAY_CORPUS`` when set, else
``../shared/corpus`` beside the checkout.  Tests that need it use
``needs_corpus`` and skip with a clear message where it is absent.
"""

from __future__ import annotations

import csv
import os
from functools import cache
from pathlib import Path

import pytest

_REPO = Path(__file__).resolve().parent.parent


def _locate() -> Path | None:
    env = os.environ.get("GATEWAY_CORPUS")
    candidate = Path(env) if env else _REPO.parent / "shared" / "corpus"
    return candidate if (candidate / "MANIFEST.csv").is_file() else None


CORPUS: Path | None = _locate()

needs_corpus = pytest.mark.skipif(
    CORPUS is None,
    reason="the shared image corpus is absent: set GATEWAY_CORPUS to a folder holding MANIFEST.csv",
)


@cache
def corpus_entries() -> tuple[dict, ...]:
    """Rows of MANIFEST.csv, each with ``file``: the absolute Path of the image."""
    if CORPUS is None:
        return ()
    with open(CORPUS / "MANIFEST.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        row["file"] = CORPUS / row["path"]
        row["folder"] = row["path"].split("/", 1)[0]
    return tuple(rows)


def corpus_params(*, series: bool = True, limit_per_series: int | None = None) -> list:
    """``pytest.param`` per corpus image (id = manifest path), or one skipped param.

    `limit_per_series` keeps only the first N images of each folder under
    ``series/`` so that slow parametrisations can sample long series.
    """
    entries = corpus_entries()
    if not entries:
        return [pytest.param(None, marks=needs_corpus, id="corpus-absent")]
    params, seen = [], {}
    for row in entries:
        parts = row["path"].split("/")
        if parts[0] == "series":
            if not series:
                continue
            if limit_per_series is not None:
                seen[parts[1]] = seen.get(parts[1], 0) + 1
                if seen[parts[1]] > limit_per_series:
                    continue
        params.append(pytest.param(row, id=row["path"]))
    return params


def series_folders() -> list[Path]:
    """Folders of the corpus that hold one real series each."""
    if CORPUS is None:
        return []
    return sorted(p for p in (CORPUS / "series").iterdir() if p.is_dir())
