"""Codec registry keyed by transfer syntax UID.

Codecs register themselves with :func:`register`; the built-in ones are
imported lazily on the first look-up so that importing the package stays
cheap.  Use :func:`get_codec` with a UID, a pydicom keyword (``"RLELossless"``)
or a codec name (``"rle"``).  The registry holds each codec with its module's
defaults; :func:`configured` gives one with encoder options set (our private
syntax's ``version``), for whoever encodes with them.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from gateway.codecs.base import Codec, FrameInfo, check_frame
from gateway.dicom.uids import lookup
from gateway.errors import CodecNotFoundError

__all__ = ["Codec", "FrameInfo", "check_frame", "register", "get_codec", "all_codecs", "resolve_uid",
           "configured"]

# Modules that define the built-in codecs; each calls ``register`` on import.
_BUILTIN_MODULES = (
    "gateway.codecs.rle",
    "gateway.codecs.jpeg_lossless",
    "gateway.codecs.jpegls",
    "gateway.codecs.jpeg2000",
    "gateway.codecs.htj2k",
    "gateway.codecs.private",
)

_REGISTRY: dict[str, Codec] = {}
_loaded = False


def register(codec: Codec) -> Codec:
    """Add `codec` to the registry under its transfer syntax UID."""
    if not isinstance(codec, Codec):
        raise TypeError(f"{codec!r} does not implement the Codec protocol")
    _REGISTRY[codec.uid] = codec
    return codec


def _load_builtins() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in _BUILTIN_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            # A built-in module that is not part of this build is simply absent;
            # any other import failure is a real error and must surface.
            if exc.name != module:
                raise


def all_codecs() -> list[Codec]:
    """Every registered codec, standard ones first, then by name."""
    _load_builtins()
    return sorted(_REGISTRY.values(), key=lambda c: (c.private, c.name))


def resolve_uid(name_or_uid: str) -> str:
    """Turn a UID, pydicom keyword or codec name into a transfer syntax UID.

    Any syntax of :mod:`gateway.dicom.uids` resolves, registered here or not
    (the pipeline needs the UIDs of syntaxes it only decodes or passes through).
    """
    _load_builtins()
    for codec in _REGISTRY.values():
        if name_or_uid in (codec.uid, codec.keyword, codec.name):
            return codec.uid
    entry = lookup(name_or_uid)
    if entry is not None:
        return entry.uid
    raise CodecNotFoundError(f"unknown transfer syntax {name_or_uid!r}")


def get_codec(name_or_uid: str) -> Codec:
    """Return the codec for a UID, keyword or codec name."""
    _load_builtins()
    if name_or_uid in _REGISTRY:
        return _REGISTRY[name_or_uid]
    for codec in _REGISTRY.values():
        if name_or_uid in (codec.keyword, codec.name):
            return codec
    raise CodecNotFoundError(
        f"no codec for transfer syntax {name_or_uid!r}; "
        f"available: {', '.join(c.keyword for c in all_codecs())}"
    )


def configured(codec: Codec, options: Mapping[str, Any] | None) -> Codec:
    """`codec` with its encoder's keyword `options` set; `codec` itself when there are none.

    ``TypeError`` when the codec takes no such option (see
    :meth:`~gateway.codecs.base.FunctionCodec.with_options`).
    """
    if not options:
        return codec
    with_options = getattr(codec, "with_options", None)
    if with_options is None:
        raise TypeError(f"codec {codec.name!r} takes no encoder options")
    return with_options(**options)
