"""Recompression with proof: decode what arrived, encode with our codecs, verify bit for bit.

:func:`recompress` is the one entry point the worker, the forwarders (a
re-encode for a destination) and the ``compress`` command use; it returns an
:class:`Outcome` saying what was forwarded and why.  The modules:

* :mod:`~gateway.pipeline.policy`: the policy (triage, encode, rebuild the dataset);
* :mod:`~gateway.pipeline.pixels`: frames out of any dataset, in the codec array form;
* :mod:`~gateway.pipeline.verify`: value-for-value comparison and the reference decoders.
"""

from gateway.pipeline.policy import (
    LOSSLESS_SOURCES,
    NATIVE_TARGETS,
    REFERENCE_DECODERS,
    Outcome,
    pixel_hash,
    recompress,
    recompress_file,
    to_little_endian,
)

__all__ = ["Outcome", "recompress", "recompress_file", "pixel_hash", "to_little_endian", "NATIVE_TARGETS",
           "LOSSLESS_SOURCES", "REFERENCE_DECODERS"]
