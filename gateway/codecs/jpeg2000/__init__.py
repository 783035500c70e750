"""JPEG 2000 (ITU-T T.800), reversible path: our encoder and decoder, one module per stage.

``codestream`` (marker segments), ``tier2`` (geometry, tag trees, packets,
progression orders), ``dwt`` (5/3 wavelet), ``t1`` with ``mq`` (EBCOT block
coder) and ``codec`` (the public codec for 1.2.840.10008.1.2.4.90 and the
decoder for reversible 1.2.840.10008.1.2.4.91 streams).
"""

from gateway.codecs.jpeg2000.codec import CODEC, decode, encode, levels_for, supports

__all__ = ["CODEC", "decode", "encode", "levels_for", "supports"]
