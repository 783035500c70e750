"""HTJ2K (ITU-T T.814, JPEG 2000 Part 15), reversible path: our encoder and decoder.

``tables`` (the CxtVLC and U-VLC code tables of the standard), ``ht`` (the
HT cleanup pass as numba kernels) and ``codec`` (the public codecs for
1.2.840.10008.1.2.4.201 and .202).  The codestream, tier 2 and wavelet are
shared with :mod:`gateway.codecs.jpeg2000`.
"""

from gateway.codecs.htj2k.codec import CODEC, CODEC_RPCL, decode, encode, levels_for, supports

__all__ = ["CODEC", "CODEC_RPCL", "decode", "encode", "levels_for", "supports"]
