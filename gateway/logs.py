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
import threading
import time
import warnings
from collections import OrderedDict
from datetime import datetime
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
    """Formats a message with its control characters escaped: one event is one line, whatever it quotes.

    Its time is ISO 8601 local time with its offset from UTC
    (``2026-03-29T02:30:00.125+02:00``): the hour that the end of summer time
    repeats, or a change of the machine's time zone, would otherwise make
    two moments one, and lines are matched with other systems' logs by it.
    """

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return datetime.fromtimestamp(record.created).astimezone().isoformat(timespec="milliseconds")

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
    per stage.  Python's warnings become log lines (:func:`_route_warnings`).
    Calling it again (a reload) replaces the handlers and adds nothing else.
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
    _route_warnings()


# The actions under which Python keeps each text shown, for good, to show it only once.
_KEEPING = frozenset({"default", "module", "once"})


def _route_warnings() -> None:
    """Show Python's warnings through :func:`_show_warning`, under the action "always".

    Under Python's own action ("default"), and "module" and "once", each
    distinct text shown is kept in the warning registry of the module that
    warned (or in ``warnings.onceregistry``) for as long as the process lives.
    pydicom's texts quote the value they are about, so each malformed value
    (a UID, an Instance Number, a character set) would keep one entry more,
    and write one log line more, in the service and in each worker process.
    Those filters, and warnings no filter matches, are shown "always" now,
    which keeps nothing, and :func:`_show_warning` leaves out the recurring
    ones in a table of bounded size.  Filters that ignore a warning or make
    it an error keep their place and meaning; so do those set later, such as
    pytest's or ``warnings.catch_warnings`` blocks, which put back the
    filters they found when they end.
    """
    warnings.filters[:] = [("always", *rest) if action in _KEEPING else (action, *rest)
                           for action, *rest in warnings.filters]
    warnings.simplefilter("always", append=True)  # not twice; tells Python the filters changed
    warnings.showwarning = _show_warning


class _Recurring:
    """One log line per kind of warning every `every` seconds; the others are counted in it.

    As the receiver throttles its refusal lines.  At most `size` kinds are
    remembered, the least recently seen dropped first, so warnings of many
    kinds cannot grow it either (a dropped kind's count is lost).
    """

    def __init__(self, every: float = 10.0, size: int = 256) -> None:
        self.every = every
        self.size = size
        self._last: OrderedDict[tuple[object, ...], tuple[float, int]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._last)

    def admit(self, kind: tuple[object, ...]) -> tuple[int, float] | None:
        """None if `kind` was shown less than `every` seconds ago (it is counted), otherwise how many were
        left out since it was last shown, and how many seconds ago that was."""
        now = time.monotonic()
        with self._lock:
            last, hidden = self._last.pop(kind, (-1e9, 0))
            if now - last < self.every:
                self._last[kind] = (last, hidden + 1)
                return None
            self._last[kind] = (now, 0)
            while len(self._last) > self.size:
                self._last.popitem(last=False)
        return hidden, now - last


_recurring = _Recurring()

# A quoted value in a warning's text: 'x', "x", b'x', from a quote that no letter or digit comes before to
# the same quote that none comes after (a name such as O'Brien is one value, an apostrophe starts none).
_QUOTED = re.compile(r"""(?<!\w)b?(['"]).*?\1(?!\w)""")
_DIGITS = re.compile(r"\d+")


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: object = None, line: str | None = None) -> None:
    """Python warnings (pydicom's about a malformed value, numba's) as log lines, with every quoted
    value left out: pydicom quotes the value it finds malformed, and that value may be a patient's
    name or ID.  Otherwise they would go to stderr as they are, outside the log's file and format.

    A warning of the same kind as one shown less than 10 s ago is left out, and counted in the next
    line of its kind: its text without the quoted values and numbers (a length, a tag), its category
    and where it was issued.  A malformed value repeated on every instance is one line every 10 s.
    """
    text = _QUOTED.sub("'...'", str(message))
    shown = _recurring.admit((category, _DIGITS.sub("#", text[:500]), filename, lineno))
    if shown is None:
        return
    hidden, seconds = shown
    more = f" ({hidden} more like it in the last {seconds:.0f} s)" if hidden else ""
    get_logger("warnings").warning("%s: %s (%s:%d)%s", category.__name__, text, Path(filename).name, lineno, more)


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
