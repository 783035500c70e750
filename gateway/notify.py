"""Tell a service manager how the gateway is doing (the systemd notification protocol, sd_notify(3)).

Under systemd with ``Type=notify`` (``config/dicom-gateway.service``), the
manager names a datagram socket in ``$NOTIFY_SOCKET``; ``serve`` sends
``READY=1`` once it listens (after its codec kernels are compiled, which
can take tens of seconds after an install), ``RELOADING=1`` then ``READY=1``
around a reload, and ``STOPPING=1`` when it stops, each with a ``STATUS=``
line that ``systemctl status`` shows.  Without ``$NOTIFY_SOCKET`` nothing
is sent.
"""

from __future__ import annotations

import os
import socket
import time

__all__ = ["notify", "reloading"]


def notify(*fields: str) -> bool:
    """Send `fields` (``KEY=value``) to the service manager; False when there is none or it cannot be told."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address or address[0] not in "/@":
        return False
    if address[0] == "@":  # a socket in the abstract namespace
        address = "\0" + address[1:]
    message = "\n".join(field.replace("\n", " ") for field in fields).encode("utf-8", "replace")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.settimeout(1.0)
            sock.sendto(message, address)
    except OSError:
        return False
    return True


def reloading(status: str) -> bool:
    """A reload begins (``RELOADING=1``, with the monotonic time systemd's ``Type=notify-reload`` asks for)."""
    return notify("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}",
                  f"STATUS={status}")
