"""Process one instance as a worker does, in a fresh interpreter, and print its memory as JSON.

``python -m tests.worker_peak CONFIG FILE``: the configured codecs are warmed
up first, then `FILE` is stored in the spool and processed.  The line printed
holds the resident size before processing (``before``), the process's peak
(``peak``, VmHWM: ``ru_maxrss`` would keep the size of the parent from before
the exec), the processed object's path and size, and the syntax it was stored
in.  Used by the worker memory test and the end-to-end benchmark.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _status(field: str) -> int:
    return int(Path("/proc/self/status").read_text().split(f"{field}:")[1].split()[0]) * 1024


def main(config_path: str, file: str) -> None:
    from gateway.config import load_config
    from gateway.spool import Spool
    from gateway.warmup import configured_syntaxes, warm_up
    from gateway.worker import process_instance

    config = load_config(Path(config_path))
    warm_up(configured_syntaxes(config, forwarding=False))
    spool = Spool(config.spool.directory)
    ident = spool.store_received(Path(file), "MODALITY")
    before = _status("VmRSS")
    jobs = process_instance(config, spool, ident)
    peak = _status("VmHWM")
    stored = spool.object_path(ident)
    print(json.dumps({"before": before, "peak": peak, "object": str(stored), "stored": stored.stat().st_size,
                      "syntax": jobs[0].identity.transfer_syntax if jobs else None}))


if __name__ == "__main__":
    main(*sys.argv[1:3])
