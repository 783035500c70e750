"""A pynetdicom C-STORE SCP that keeps nothing: the ceiling of any receiver built on pynetdicom.

    python benchmarks/bare_scp.py PORT

It accepts every storage SOP class in the syntaxes the gateway accepts,
streams each dataset to a temporary file as the gateway's receiver has
pynetdicom do, and answers Success at once: no fsync, no check, no spool,
no worker.  ``bench_e2e.py`` times storescu against it beside the direct
path and the gateway, so the share of the gap that is pynetdicom's own
is measured, not guessed.
"""

from __future__ import annotations

import signal
import socket
import sys
from pathlib import Path

from pynetdicom import AE, AllStoragePresentationContexts, _config, evt

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.net.scp import accepted_syntaxes, tcp_nodelay  # noqa: E402


def main(port: int) -> None:
    _config.STORE_RECV_CHUNKED_DATASET = True  # as the gateway's receiver: datasets go to a file as they arrive
    ae = AE(ae_title="BARE")
    ae.maximum_pdu_size = 1_048_576
    syntaxes = accepted_syntaxes()
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax, syntaxes)
    handlers = [(evt.EVT_C_STORE, lambda event: 0x0000), (evt.EVT_CONN_OPEN, tcp_nodelay)]
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=handlers)
    with socket.create_connection(("127.0.0.1", port)):
        pass  # listening: tell the parent by the line below
    print("ready", flush=True)
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    server.shutdown()


if __name__ == "__main__":
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    main(int(sys.argv[1]))
