"""Imported once by the fork server of the local worker pool: gets the codec kernels ready.

The pool's worker processes are forked from that server, so what it imports
and what numba loads (from its cache, or compiles) here is in every worker
from its first file on, and in the workers of every later pool of the same
client, instead of each worker loading the kernels itself.  The driver names
the target syntaxes in :data:`SYNTAXES_ENV` before the server starts.
Warming is only a head start: any failure here is left for the first file
to meet and report.

A killed client must not leave processes behind, yet neither the fork
server nor a pool worker notices its client's death by itself (a worker
waits on a queue whose writing end it holds too).  So the server watches its
parent, the client, and each worker its parent, the server
(:func:`exit_with_parent`): the client dies, the server exits, its workers
follow within a second.  A file a worker was writing stays a temporary
file, which the next run deletes.
"""

from __future__ import annotations

import os
import threading
import time

SYNTAXES_ENV = "GATEWAY_BULK_WARM_SYNTAXES"
"""Comma-separated transfer syntax UIDs whose kernels the fork server loads."""


def exit_with_parent(period: float = 0.5) -> None:
    """Exit this process (``os._exit``) once its parent has gone; a daemon thread watches."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(period)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def pool_worker() -> None:
    """The initializer of each pool worker: exit with the fork server, and leave Ctrl-C to the client.

    A Ctrl-C on a terminal reaches every process of the group; the client
    stops the run (the file a worker has in hand finishes, the rest is left
    for the next run), and the workers must not die printing a traceback.
    """
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    exit_with_parent()


_INDEPENDENT_DECODERS = ("rle.rle", "libjpeg", "jpeg_ls", "openjpeg")
"""The other projects' decoders the verification may call (see :mod:`gateway.pipeline.decoders`)."""


def _warm() -> None:
    import importlib

    # what every task imports, once for all workers
    import pydicom.filereader
    import pydicom.pixels  # noqa: F401

    import gateway.bulk.task
    import gateway.pipeline  # noqa: F401
    from gateway.warmup import warm_up

    for name in _INDEPENDENT_DECODERS:
        try:
            importlib.import_module(name)
        except ImportError:
            pass  # not installed: the verification says so on the files that need it

    syntaxes = [uid for uid in os.environ.get(SYNTAXES_ENV, "").split(",") if uid]
    if syntaxes:
        warm_up(syntaxes)


exit_with_parent()
try:
    _warm()
except Exception:  # noqa: BLE001, S110 - an optimisation only; the fork server must start regardless
    pass
