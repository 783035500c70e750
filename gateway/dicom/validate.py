"""The one UID check and the one AE title check (PS3.5 9.1 and 6.2).

Every module that accepts a UID or an AE title, from the configuration, the
wire or a file, asks these functions, so the receiver, the folder archive and
the configuration never disagree on what is valid.
"""

from __future__ import annotations

import re

__all__ = ["UID_MAX_LENGTH", "AE_TITLE_MAX_LENGTH", "is_valid_uid", "ae_title_problem"]

UID_MAX_LENGTH = 64
AE_TITLE_MAX_LENGTH = 16
_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")


def is_valid_uid(value: object) -> bool:
    """True for a UID as PS3.5 9.1 defines it: dotted numbers without leading zeros, 64 characters at most."""
    return isinstance(value, str) and len(value) <= UID_MAX_LENGTH and _UID.fullmatch(value) is not None


def ae_title_problem(value: object) -> str | None:
    """None for a valid AE title (PS3.5 6.2, VR AE), else what is wrong with it.

    An AE title is 1 to 16 characters of the default repertoire without
    backslash or control characters; leading and trailing spaces are not
    significant, so a title that has them is refused rather than silently
    trimmed, and a title of spaces only is empty.
    """
    if not isinstance(value, str):
        return f"must be a string, got {type(value).__name__}"
    if not value.strip():
        return "must not be empty"
    if len(value) > AE_TITLE_MAX_LENGTH:
        return f"must be at most {AE_TITLE_MAX_LENGTH} characters, got {len(value)} ({value!r})"
    if value != value.strip() or "\\" in value or not value.isascii() or not value.isprintable():
        return f"must be printable ASCII without backslash or edge spaces, got {value!r}"
    return None
