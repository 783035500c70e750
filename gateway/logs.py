"""Logging: one line per instance and stage, with UIDs and never patient data.

Stages are ``received``, ``encoded``, ``verified``, ``passed-through``,
``forwarded``, ``retry`` and ``dead``.  Each line is ``stage key=value ...``
so it greps and parses easily::

    received sop=1.2.3 study=1.2 calling=MODALITY syntax=1.2.840.10008.1.2.1 bytes=524800
    encoded sop=1.2.3 syntax=1.2.840.10008.1.2.5 ratio=2.31 seconds=0.012
    forwarded sop=1.2.3 destination=archive syntax=1.2.840.10008.1.2.5 seconds=0.004

Only the helpers here format instance lines, and they accept UIDs and
numbers, not datasets, so a patient name cannot slip in.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import re
import sys
import warnings
from pathlib import Path

__all__ = ["LOGGER_NAME", "file_handler", "get_logger", "one_line", "setup_logging", "stage"]

LOGGER_NAME = "gateway"
_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


# C0 and C1 control characters and DEL, shown as \xNN: a value a peer sent cannot start a line of its own.
_ESCAPES = {code: f"\\x{code:02x}" for code in (*range(0x20), *range(0x7F, 0xA0))}


def one_line(text: str) -> str:
    """`text` with its control characters escaped: it neither breaks a line nor commands a terminal."""
    return text.translate(_ESCAPES)


class _OneLine(logging.Formatter):
    """Formats a message with its control characters escaped: one event is one line, whatever it quotes."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = one_line(record.message)
        return super().formatMessage(record)


def get_logger(part: str = "") -> logging.Logger:
    """The gateway's logger, or its child ``gateway.<part>``."""
    return logging.getLogger(f"{LOGGER_NAME}.{part}" if part else LOGGER_NAME)


def setup_logging(level: str = "INFO", file: Path | None = None, max_bytes: int = 0, backups: int = 1, *,
                  rotate: bool = True) -> None:
    """Send the gateway's log lines to stderr (and `file`), at `level`.

    The file is rotated past `max_bytes` (:func:`file_handler`); a worker
    process passes ``rotate=False`` and follows the service's rotations.
    pynetdicom's own chatter is kept at WARNING so one instance stays one line
    per stage.
    """
    root = get_logger()
    root.setLevel(level)
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    formatter = _OneLine(_FORMAT)
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if file is not None:
        handlers.append(file_handler(file, max_bytes, backups, rotate=rotate))
    for handler in handlers:
        handler.setFormatter(formatter)
        root.addHandler(handler)
    root.propagate = False
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    warnings.showwarning = _show_warning


# A quoted value in a warning's text: 'x', "x", b'x', from a quote that no letter or digit comes before to
# the same quote that none comes after (a name such as O'Brien is one value, an apostrophe starts none).
_QUOTED = re.compile(r"""(?<!\w)b?(['"]).*?\1(?!\w)""")


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: object = None, line: str | None = None) -> None:
    """Python warnings (pydicom's about a malformed value, numba's) as log lines, with every quoted
    value left out: pydicom quotes the value it finds malformed, and that value may be a patient's
    name or ID.  Otherwise they would go to stderr as they are, outside the log's file and format."""
    text = _QUOTED.sub("'...'", str(message))
    get_logger("warnings").warning("%s: %s (%s:%d)", category.__name__, text, Path(filename).name, lineno)


class _PrivateOpen:
    """Log files are created 0600 whatever the umask: their lines name instances by UID."""

    baseFilename: str
    encoding: str | None
    errors: str | None

    def _open(self):  # type: ignore[no-untyped-def]
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        return os.fdopen(fd, "a", encoding=self.encoding, errors=self.errors)


class _RotatingFile(_PrivateOpen, logging.handlers.RotatingFileHandler):
    pass


class _WatchedFile(_PrivateOpen, logging.handlers.WatchedFileHandler):
    pass


def file_handler(file: Path, max_bytes: int = 0, backups: int = 1, *, rotate: bool = True) -> logging.Handler:
    """A handler appending to `file` (created 0600, its missing folders 0700).

    With `rotate` and `max_bytes` > 0 the file is renamed ``<file>.1`` once a
    line would take it past `max_bytes`, the older ones moving up to
    ``<file>.<backups>`` (the oldest is deleted).  Otherwise the handler only
    follows the file: when it has been renamed or deleted (by the service's
    rotation, or by logrotate with ``max_bytes = 0``), the next line opens a
    new one.  The service rotates; its worker processes, which append to the
    same file, follow.
    """
    from gateway.files import make_dirs

    make_dirs(file.parent)  # new folders 0700, whatever the umask
    if rotate and max_bytes > 0:
        return _RotatingFile(file, maxBytes=max_bytes, backupCount=backups, encoding="utf-8")
    return _WatchedFile(file, encoding="utf-8")


def _value(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    text = str(value)
    if not text or any(c in text for c in ' "=\\'):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


def stage(logger: logging.Logger, name: str, sop: str, level: int = logging.INFO, **fields: object) -> None:
    """Log one line for instance `sop` at stage `name` with `fields`."""
    if not logger.isEnabledFor(level):
        return
    parts = [name, f"sop={_value(sop)}"]
    parts.extend(f"{key}={_value(value)}" for key, value in fields.items() if value is not None)
    logger.log(level, " ".join(parts))
