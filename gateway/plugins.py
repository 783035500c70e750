"""Our codecs as pydicom 3 encoder and decoder plugins, named ``"gateway"``.

Nothing is registered by importing :mod:`gateway`.  Two ways in:

* **Explicitly**, :func:`register`: every registered codec of
  :mod:`gateway.codecs` becomes pydicom's ``"gateway"`` encoder and decoder
  plugin::

      from gateway.plugins import register
      register()
      ds.compress(JPEGLSLossless, encoding_plugin="gateway")
      ds.pixel_array_options(decoding_plugin="gateway")

* **Implicitly**, where the package is installed: a start-up hook
  (:mod:`gateway._autoload`, ``DICOM_GATEWAY_NO_AUTOLOAD=1`` turns it off)
  runs :func:`install` when pydicom is imported, so a plain pydicom program
  reads our *private* syntax (``dcmread(f).pixel_array``) and can encode with
  ``encoding_plugin="gateway"`` without importing gateway.  The hook adds our
  decoders for private syntaxes only: for the standard ones pydicom keeps its
  own decoders, and ours never become a silent fallback behind them.

pydicom 3 finds pixel plugins only through its own module-level tables
(``pydicom.pixels.encoders.base._PIXEL_DATA_ENCODERS`` and
``pydicom.pixels.decoders.base._PIXEL_DATA_DECODERS``, one ``Encoder`` /
``Decoder`` object per transfer syntax UID) and offers no public way to add a
syntax, so :func:`register` writes there:

* it adds a ``"gateway"`` plugin to the existing object for each standard UID,
  after pydicom's own plugins, so that choosing a plugin stays explicit;
* it creates the ``Encoder``/``Decoder`` object where pydicom has none (e.g.
  JPEG Lossless SV1 encoding, or a private syntax of ours);
* it registers each *private* syntax with :func:`pydicom.uid.register_transfer_syntax`
  as explicit VR little endian, so the UID counts as compressed (encapsulated)
  for pydicom.  pydicom still asks for the data set encoding when *writing*
  such a data set unless the UID object it holds carries it:
  ``ds.save_as(path, implicit_vr=False, little_endian=True)``.

The gateway itself never relies on these plugins: its pipeline picks its
decoders by name (:mod:`gateway.pipeline.decoders`).

The plugin contract is pydicom's: the module exports ``is_available(uid)``,
``ENCODER_DEPENDENCIES`` / ``DECODER_DEPENDENCIES`` (dicts keyed by UID), and
per-frame functions ``(src: bytes, runner) -> bytes``.

For pylibjpeg, ``decode_pixel_data`` follows the
``pylibjpeg.pixel_data_decoders`` entry-point contract; the package declares
that entry point only for private syntaxes.  pydicom's ``"pylibjpeg"``
plugin uses the first pylibjpeg decoder by name, so declaring it for standard
UIDs would silently replace libjpeg or pylibjpeg-rle there.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import numpy as np

from gateway.codecs import all_codecs, configured, get_codec
from gateway.codecs.base import Codec, FrameInfo
from gateway.errors import GatewayError

if TYPE_CHECKING:
    from pydicom.pixels.decoders.base import DecodeRunner
    from pydicom.pixels.encoders.base import EncodeRunner

__all__ = [
    "PLUGIN_NAME",
    "register",
    "install",
    "is_available",
    "encode_frame",
    "decode_frame",
    "decode_pixel_data",
    "ENCODER_DEPENDENCIES",
    "DECODER_DEPENDENCIES",
]

PLUGIN_NAME = "gateway"

_DEPENDENCIES = ("numpy>=2.0", "numba>=0.60", "dicom-gateway")
_lock = threading.Lock()
_registered: set[tuple[str, bool]] = set()  # (UID, decoder added too)


# Syntaxes we decode but do not write: JPEG 2000 (.91) streams on the reversible
# path (its irreversible ones raise UnsupportedCodestreamError).
_DECODE_ONLY = {"1.2.840.10008.1.2.4.91": ("gateway.codecs.jpeg2000.codec", "decode")}


def _uids() -> dict[str, Codec]:
    return {codec.uid: codec for codec in all_codecs()}


def _decoder(uid: str) -> Any:
    """The frame decoder for `uid`: a registered codec's, or a decode-only syntax's."""
    if uid in _DECODE_ONLY:
        import importlib

        module, name = _DECODE_ONLY[uid]
        return getattr(importlib.import_module(module), name)
    return get_codec(uid).decode_frame


def is_available(uid: str) -> bool:
    """True when one of our codecs handles the transfer syntax `uid`."""
    return str(uid) in _uids() or str(uid) in _DECODE_ONLY


def __getattr__(name: str) -> Any:
    # The dependency tables are computed from the registry when pydicom asks.
    if name == "ENCODER_DEPENDENCIES":
        return {uid: _DEPENDENCIES for uid in _uids()}
    if name == "DECODER_DEPENDENCIES":
        return {uid: _DEPENDENCIES for uid in [*_uids(), *_DECODE_ONLY]}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _frame_info(runner: Any) -> FrameInfo:
    """The FrameInfo described by a pydicom encode/decode runner."""
    return FrameInfo(
        rows=runner.rows,
        columns=runner.columns,
        samples_per_pixel=runner.samples_per_pixel,
        bits_allocated=runner.bits_allocated,
        bits_stored=runner.bits_stored,
        pixel_representation=runner.pixel_representation,
        photometric_interpretation=str(runner.photometric_interpretation),
        planar_configuration=runner.planar_configuration if runner.samples_per_pixel > 1 else 0,
    )


def encode_frame(src: bytes, runner: EncodeRunner) -> bytes:
    """pydicom encoder plugin: one native little-endian frame to a codestream.

    A codec's encoder options come from ``ds.compress``'s keyword arguments
    where given: ``version=2`` writes version 2 of our private syntax (its
    module's default is version 1, which every reader of it decodes).
    """
    info = _frame_info(runner)
    codec = get_codec(str(runner.transfer_syntax))
    given = {name: runner.get_option(name) for name in getattr(codec, "encode_options", ())}
    codec = configured(codec, {name: value for name, value in given.items() if value is not None})
    reason = codec.supports(info)
    if reason:
        raise ValueError(f"the '{PLUGIN_NAME}' {codec.name} encoder cannot carry this image: {reason}")
    # pydicom hands over each sample in the smallest container that holds
    # Bits Stored (1, 2 or 4 bytes), keeping only the low bytes.
    itemsize = 1 if info.bits_stored <= 8 else 2 if info.bits_stored <= 16 else 4
    samples = info.rows * info.columns * info.samples_per_pixel
    if len(src) != samples * itemsize:
        raise ValueError(f"frame has {len(src)} bytes, expected {samples * itemsize}")
    values = np.frombuffer(src, dtype=f"<u{itemsize}").astype(np.int64)
    values &= (1 << info.bits_stored) - 1
    if info.signed:
        values -= (values & (1 << (info.bits_stored - 1))) << 1
    # Buffers keep the dataset's Planar Configuration; arrays arrive
    # colour-by-pixel, except for JPEG-LS where pydicom makes them planar.
    planar = info.samples_per_pixel == 3 and info.planar_configuration == 1
    if planar and runner.is_array:
        from pydicom.uid import JPEGLSTransferSyntaxes

        planar = runner.transfer_syntax in JPEGLSTransferSyntaxes
    if planar:
        frame = values.reshape(3, info.rows, info.columns).transpose(1, 2, 0)
    else:
        frame = values.reshape(info.shape)
    frame = np.ascontiguousarray(frame, dtype=info.dtype)
    try:
        return codec.encode_frame(frame, info)
    except GatewayError as exc:
        raise ValueError(str(exc)) from exc


def decode_frame(src: bytes, runner: DecodeRunner) -> bytes:
    """pydicom decoder plugin: one codestream to a native frame (colour-by-pixel)."""
    info = _frame_info(runner)
    frame = _decoder(str(runner.transfer_syntax))(bytes(src), info)
    if info.samples_per_pixel > 1:
        runner.set_option("planar_configuration", 0)
    return frame.astype(info.dtype.newbyteorder("<"), copy=False).tobytes()


def decode_pixel_data(src: bytes, ds: Any = None, version: int = 1, **kwargs: Any) -> np.ndarray | bytearray:
    """pylibjpeg ``pixel_data_decoders`` entry point for our transfer syntaxes.

    `kwargs` (or `ds`) give rows, columns, samples_per_pixel, bits_allocated,
    bits_stored, pixel_representation, photometric_interpretation and
    transfer_syntax_uid.  Version 1 returns an array, version 2 a bytearray.
    """
    if ds is not None:
        kwargs = {
            "rows": ds.Rows,
            "columns": ds.Columns,
            "samples_per_pixel": ds.SamplesPerPixel,
            "bits_allocated": ds.BitsAllocated,
            "bits_stored": ds.BitsStored,
            "pixel_representation": ds.PixelRepresentation,
            "photometric_interpretation": ds.PhotometricInterpretation,
            "transfer_syntax_uid": ds.file_meta.TransferSyntaxUID,
            **kwargs,
        }
    info = FrameInfo(
        rows=kwargs["rows"],
        columns=kwargs["columns"],
        samples_per_pixel=kwargs.get("samples_per_pixel", 1),
        bits_allocated=kwargs["bits_allocated"],
        bits_stored=kwargs.get("bits_stored", kwargs["bits_allocated"]),
        pixel_representation=kwargs.get("pixel_representation", 0),
        photometric_interpretation=str(kwargs.get("photometric_interpretation", "MONOCHROME2")),
    )
    frame = _decoder(str(kwargs["transfer_syntax_uid"]))(bytes(src), info)
    if version == 1:
        return frame
    return bytearray(frame.tobytes())


def register(*, standard_decoders: bool = True) -> None:
    """Add the ``"gateway"`` plugins to pydicom for every registered codec (idempotent).

    With `standard_decoders` False (what the installed hook does in every
    program) our decoders are added only for our private syntaxes, which
    nobody else decodes: for a standard syntax they would become a silent
    fallback behind pydicom's own decoders.  A program that wants them there
    too calls ``register()``.
    """
    from pydicom.pixels.decoders import base as decoders
    from pydicom.pixels.encoders import base as encoders
    from pydicom.uid import UID, register_transfer_syntax

    with _lock:
        for codec in all_codecs():
            with_decoder = standard_decoders or codec.private
            if (codec.uid, with_decoder) in _registered or (codec.uid, True) in _registered:
                continue
            uid = UID(codec.uid)
            if codec.private:
                uid = register_transfer_syntax(uid, implicit_vr=False, little_endian=True)
            encoder = encoders._PIXEL_DATA_ENCODERS.get(uid, (None,))[0]
            if encoder is None:
                encoder = encoders.Encoder(uid)
                encoders._PIXEL_DATA_ENCODERS[uid] = (encoder, "gateway")
            if PLUGIN_NAME not in encoder._available and PLUGIN_NAME not in encoder._unavailable:
                encoder.add_plugin(PLUGIN_NAME, (__name__, "encode_frame"))
            if with_decoder:
                decoder = decoders._PIXEL_DATA_DECODERS.get(uid, (None,))[0]
                if decoder is None:
                    decoder = decoders.Decoder(uid)
                    decoders._PIXEL_DATA_DECODERS[uid] = (decoder, "gateway")
                if PLUGIN_NAME not in decoder._available and PLUGIN_NAME not in decoder._unavailable:
                    decoder.add_plugin(PLUGIN_NAME, (__name__, "decode_frame"))
            _registered.add((codec.uid, with_decoder))
        if standard_decoders:  # standard syntaxes we only decode (e.g. reversible JPEG 2000 in .91)
            for uid_text in _DECODE_ONLY:
                decoder = decoders._PIXEL_DATA_DECODERS.get(UID(uid_text), (None,))[0]
                if decoder is not None and (uid_text, True) not in _registered:
                    if PLUGIN_NAME not in decoder._available and PLUGIN_NAME not in decoder._unavailable:
                        decoder.add_plugin(PLUGIN_NAME, (__name__, "decode_frame"))
                    _registered.add((uid_text, True))


def install() -> None:
    """Register with pydicom lazily, private decoders only: on its first encoder or decoder look-up.

    This is what the installed start-up hook (:mod:`gateway._autoload`) runs in
    every program where pydicom is imported.  Loading the codecs at pydicom's
    import would cost every such program the import of numba, so pydicom's two
    look-up functions are wrapped instead; the first look-up runs
    :func:`register` with ``standard_decoders=False``.
    """
    import pydicom.pixels

    for name in ("get_encoder", "get_decoder"):
        original = getattr(pydicom.pixels, name)
        if getattr(original, "_gateway_wrapped", False):
            continue
        pydicom.pixels.__dict__[name] = _registering(original)


def _registering(original: Any) -> Any:
    """`original` preceded, until it succeeds once, by :func:`register`."""
    import functools
    import warnings

    @functools.wraps(original)
    def lookup(uid: str) -> Any:
        if not _installed.is_set():
            try:
                register(standard_decoders=False)
            except (ImportError, GatewayError) as exc:
                # pydicom's own plugins keep working without ours.
                warnings.warn(f"the '{PLUGIN_NAME}' pydicom plugins are unavailable: {exc}", stacklevel=2)
            _installed.set()
        return original(uid)

    lookup._gateway_wrapped = True  # type: ignore[attr-defined]
    return lookup


_installed = threading.Event()
