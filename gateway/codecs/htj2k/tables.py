"""The code tables of the HT cleanup pass (ITU-T T.814 Annex C): CxtVLC and U-VLC.

CxtVLC (T.814 C.3, the two tables of codewords for the initial row of quads
and for the other rows).  Each entry of the standard's tables is one row
``context c_q, significance pattern rho, u_off, e_k, e_1, codeword, length``;
here every entry is written as seven hexadecimal digits ``R U K E CC L`` (rho,
u_off, e_k, e_1, the codeword as the standard gives it, read from its least
significant bit first, and its length), one string per context.  From them
:func:`decode_table` and :func:`encode_table` build the look-up tables the
kernels use; ``tests/test_htj2k.py`` checks that every context's code is
prefix-free, that every pattern the decoder can meet has exactly one entry with
``u_off = 0`` and that every embedded-magnitude pattern has an entry with
``u_off = 1``.

U-VLC (T.814 C.3.3, Table C.3): the unsigned value u of a quad's exponent
bound is a prefix (``1``, ``01``, ``001``, ``000``: u = 1, 2, 3..4, 5..), a
suffix (none, none, one bit, five bits) and, where the five-bit suffix is 28
or more, a four-bit extension: u = 5 + suffix below 28, else
33 + (suffix - 28) + 4 * extension.  :func:`uvlc_code` gives the bits.
"""

from __future__ import annotations

import numpy as np

# T.814 Table C.1, the initial row of quads (contexts 0..7).
_TABLE0 = (
    "1000064 11113F7 2000003 21227F7 3000115 31225F7 31311F7 4000023 4144136 50000E5 5144236 51510F7 6000036 "
    "61006F7 70002F7 71224F7 71200D6 8000043 81883D6 90001D6 91002D6 A000015 A188356 A1A2777 B000377 B111577 "
    "B110096 C0001E5 C1CC177 C1C4156 C1C8256 D000677 D111277 D154477 D1D8077 E0007B7 E1224B7 E1A8056 E1E43B7 "
    "F0005B7 F1991B7 F1BA6B7 F1FC2B7 F1F8396 F1E6737 F1E2196 F1F50B7 F1F4296 F1F1337",
    "0000002 10000E4 11111F7 2000064 21223B6 30001B6 31003D6 40000A4 41442B6 50000B6 5144336 51517F7 6000136 "
    "6100236 70003F7 71225F7 7120036 8000024 81881D6 90002D6 91000D6 A000356 A188156 A1A26F7 B0002F7 B1114F7 "
    "B110116 C000015 C188256 C1C4056 D0000F7 D111177 D154396 D1D8777 E000377 E122577 E1A8196 E1E4677 F000077 "
    "F1B8296 F188277 F1A2096 F1E4316 F1F1477",
    "0000002 10000E4 11111B6 2000064 21223F7 30002B6 3111336 31327F7 40000A4 41440B6 5000015 51552F7 5151136 "
    "5154236 6000036 61005F7 70001F7 71226F7 7131116 7174377 8000024 81884F7 90003D6 91001D6 A0002D6 A1000D6 "
    "B0000F7 B122777 B120356 C000156 C144256 C1C8577 D000177 D188056 D1C4396 D1D1677 E000277 E1227B7 E120196 "
    "F000477 F1F1296 F111096 F132077 F174316 F1F83B7",
    "0000003 1000044 11113D6 20000C5 21224F7 30001D6 3111056 31327F7 4000165 41442D6 5000065 51551A5 51510D6 "
    "5154356 60003F7 61445F7 61621F7 70006F7 71662F7 7164156 7173777 7171256 71720F7 80000A5 8188077 9000396 "
    "9111377 9198577 A000196 A188296 A1A2177 B000677 B1B1277 B111477 B132096 B1B87B7 C000316 C144116 C1C83B7 "
    "D0005B7 D1991B7 D1D52B7 D1D1216 D1DC6B7 D1D4016 D1D84B7 E0000B7 E1E4737 E144137 E1C83E6 E1E2337 F000537 "
    "F1AA0E6 F1B9637 F1FC037 F1F8125 F1E6237 F1F51E6 F1F4025 F1F3437 F1F11C5 F1F22E6",
    "0000002 10000E4 11113F7 2000064 21221B6 30002B6 31223D6 31317F7 40000A4 41445F7 50000B6 5100336 6000136 "
    "6100236 70001F7 71446F7 7140036 8000024 81881D6 9000116 9100777 A000015 A1AA2F7 A1A22D6 A1A80D6 B0004F7 "
    "B1B20F7 B100356 C000156 C188256 C1C4377 D000577 D111077 D110056 E000177 E144396 E1C8196 E1E2677 F000277 "
    "F199477 F191296 F1767B7 F172096 F1B8316 F1F43B7",
    "0000003 10001A5 11117F7 20000A5 21221D6 30002D6 31335F7 3132396 31313F7 4000125 41441F7 50000D6 5144356 "
    "51516F7 6000156 6122256 61642F7 70004F7 7166577 7164056 71730F7 7172777 7171377 8000025 8188196 9000266 "
    "9188177 9191677 A0001C5 A1AA296 A1A2096 A1A8316 B000277 B199077 B198116 B1B3477 B1B2216 B1B17B7 C000016 "
    "C1883E6 C1C43B7 D0005B7 D1996B7 D1981E6 D1D51B7 D1D42E6 D1D12B7 E0004B7 E1660B7 E1EA337 E1E20E6 E1EC737 "
    "E1E8366 E1E4537 F000137 F177437 F176166 F175637 F1FC237 F1F40C5 F1D9037 F1FA3D7 F1F8145 F1F37D7 F1F2045 "
    "F1F1066",
    "0000003 1000044 1111036 20000C5 21220D6 30001A5 31333D6 31311D6 31322D6 40000A5 41443F7 5000356 5111156 "
    "51547F7 6000256 61225F7 61641F7 70006F7 71664F7 7164056 71732F7 7171366 7172777 8000125 81880F7 9000396 "
    "9111377 9198577 A000196 A122296 A1A8177 B000677 B199477 B191096 B1BA277 B1B2316 B1B87B7 C000116 C1CC077 "
    "C1C8216 C1C43B7 D0005B7 D155337 D154016 D1C81B7 D1D16B7 E0002B7 E1E24B7 E1220B7 E1EC737 E1E83E6 E1E4537 "
    "F000137 F1661E6 F1EA2E6 F1F30E6 F1F2025 F1B9637 F1FC166 F1F8066 F1F5237 F1F11C5 F1F4266",
    "0000125 1000056 11117F7 2000396 21223F7 30005F7 31331F7 31326F7 31312F7 40004F7 41440F7 5000577 5111196 "
    "5154777 6000377 6100296 7000177 7166677 7173277 7172477 71751B7 7171096 7174077 80007B7 81883B7 90005B7 "
    "9100316 A000537 A122116 A1A86B7 B0002B7 B1994B7 B1B30B7 B1B1737 B1BA337 B1B2216 B1B8137 C000637 C188237 "
    "C1C4437 D000037 D1997D7 D1D55D7 D1D1016 D1DC3D7 D1D43E6 D1D81D7 E0006D7 E1662D7 E1EA0D7 E1E21E6 E1EC4D7 "
    "E1E80E6 E1E4757 F000157 F1FF065 F1FD357 F1F7557 F1F51A5 F1FB257 F1F30A5 F1F92E6 F1F1004 F1FE657 F1F6366 "
    "F1FA025 F1F20C4 F1FC166 F1F8044 F1F4084",
)

# T.814 Table C.2, the other rows of quads (contexts 0..7).
_TABLE1 = (
    "1000003 1111276 2000063 2122176 30000D5 31003B6 4000023 4144076 5000155 51002B6 6000015 61007F7 70001F7 "
    "71001B6 8000043 8188055 9000195 9100136 A000095 A1880B6 A1A23F7 B0005F7 B100336 C000115 C188236 C1C46F7 "
    "D0000F7 D100036 E0002F7 E1444F7 E1403D6 F000777 F111377 F1101D6",
    "0000001 1000054 11117F7 2000094 21221F7 30001D5 31113F7 31325F7 40000D5 4144377 5000036 51006F7 60002F7 "
    "61004F7 70000F7 7100777 8000014 8188177 90000B6 9100577 A000336 A100677 B000277 B1002B7 C000136 C100477 "
    "D000077 D1007B7 E0003B7 E1005B7 F0001B7 F1446B7 F140236",
    "0000001 1000094 11117F7 2000014 2122236 30003D6 31223F7 31311F7 4000155 41445F7 5000036 51006F7 60002F7 "
    "61004F7 70000F7 7100177 8000055 8188777 9000377 9100577 A0001D6 A1AA7B7 A1A22D6 A1A8677 B000277 B1B2477 "
    "B100077 C0000D6 C1003B7 D0005B7 D1001B7 E0006B7 E1442B7 E1404B7 F0000B7 F144737 F151337 F172537 F1F8137",
    "0000002 10000A4 11110B6 2000024 2122236 30000E5 31337F7 3132336 3131136 4000165 41443F7 5000036 51113D6 "
    "51541F7 60001D6 61005F7 70002D6 71442F7 71511E6 71726F7 8000065 81884F7 90000D6 9100356 A000156 A122256 "
    "A1A80F7 B000056 B188396 B1B3177 B1B2196 B1B1777 C000296 C100096 D000377 D144577 D140316 E000677 E144277 "
    "E1C8477 E1E26B7 F000116 F166077 F1737B7 F1FA3B7 F1F2216 F1F8016 F1A85B7 F1F51B7 F1F13E6 F1F42B7",
    "0000001 10000D5 11117F7 2000155 21223F7 30005F7 31006F7 4000094 4144236 5000336 51001F7 6000136 61002F7 "
    "70004F7 7100577 8000014 81880F7 9000777 9100377 A0001D6 A100177 B000677 B1006B7 C000055 C1CC277 C1C8477 "
    "C1C4077 D0007B7 D1003B7 E0005B7 E1221B7 E120036 F0002B7 F1114B7 F1320B7 F1303D6",
    "0000002 10001E5 11113B6 20000A5 21223F7 30001B6 31000B6 4000024 41442B6 50000E5 5144336 51517F7 6000136 "
    "61006F7 7000236 71225F7 7120156 8000165 8188036 90003D6 91001F7 A0001D6 A1002D6 B0000D6 B1114F7 B110356 "
    "C000065 C144256 C1C82F7 D000056 D111777 D154396 D1D80F7 E000196 E122577 E1A8016 E1E4377 F0001A5 F199177 "
    "F1D5677 F1F3077 F1F1296 F176277 F1FC096 F1F4316 F1FA477 F1F8116 F1F2216",
    "0000003 1000024 1111036 20000C4 21223D6 30001D6 31220D6 31317F7 4000044 41442D6 50000A5 5144356 51512F7 "
    "6000156 61223F7 61645F7 7000256 7122296 71311F7 71746F7 8000165 8188056 9000396 9100196 A000065 A1AA0F7 "
    "A1A2096 A1A84F7 B0000E6 B1B2777 B122377 B1A8577 B1B1477 C0001A5 C1CC177 C1C8677 C1C4277 D000316 D1D4077 "
    "D1447B7 D1C83B7 D1D12B7 E000116 E1E45B7 E1441B7 E1EA6B7 E1E8216 E1E2337 F000016 F1334B7 F1760B7 F1FA737 "
    "F1F23E6 F1B9537 F1FC637 F1F81E6 F1F5137 F1F42E6 F1F1237",
    "0000044 1000336 1111136 2000236 21227F7 3000036 31113F7 31326F7 40002D6 41445F7 5000165 51113D6 51541F7 "
    "60001D6 6100777 7000065 71742F7 71444F7 71730F7 71710D6 7172577 8000356 8188377 9000156 9100277 A000256 "
    "A100296 B0001A5 B1B1177 B111677 B132056 B1B87B7 C000396 C100196 D0000C5 D1D1477 D111077 D154096 D1D81B7 "
    "E000316 E1E23B7 E1225B7 E1A83E6 E1E40B7 F000003 F1FF6B7 F1F72B7 F1FB4B7 F1F3116 F176216 F1FA016 F1F20A5 "
    "F1B91E6 F1FC0E6 F1F8125 F1F52E6 F1F1025 F1F41C5",
)


def _entries(table: tuple[str, ...]) -> list[tuple[int, int, int, int, int, int, int]]:
    """Rows ``(c_q, rho, u_off, e_k, e_1, codeword, length)`` of one CxtVLC table."""
    rows = []
    for context, text in enumerate(table):
        for token in text.split():
            rho, u_off, e_k, e_1 = (int(token[i], 16) for i in range(4))
            rows.append((context, rho, u_off, e_k, e_1, int(token[4:6], 16), int(token[6], 16)))
    return rows


def entries(initial: bool) -> list[tuple[int, int, int, int, int, int, int]]:
    """The standard's CxtVLC entries for the initial row of quads (`initial`) or the other rows."""
    return _entries(_TABLE0 if initial else _TABLE1)


def decode_table(initial: bool) -> np.ndarray:
    """Decoding look-up: index ``(c_q << 7) | next seven bits`` (first bit lowest).

    Each value packs ``length | rho << 4 | u_off << 8 | e_k << 9 | e_1 << 13``;
    0 marks a bit pattern no codeword of that context starts with.
    """
    lut = np.zeros(8 << 7, dtype=np.uint32)
    for context, rho, u_off, e_k, e_1, cwd, length in entries(initial):
        value = length | rho << 4 | u_off << 8 | e_k << 9 | e_1 << 13
        for high in range(1 << (7 - length)):
            index = (context << 7) | (high << length) | cwd
            if lut[index]:
                raise ValueError(f"CxtVLC codewords overlap in context {context}")
            lut[index] = value
    return lut


def encode_table(initial: bool) -> np.ndarray:
    """Encoding look-up: index ``(c_q << 8) | (rho << 4) | emb``, the codeword to send.

    `emb` marks the samples of the quad whose exponent reaches the quad's
    bound (0 when u = 0).  Among the entries that may carry it (u_off = 0
    when emb is 0; else u_off = 1 and ``emb & e_k == e_1``) the one that
    costs the fewest bits is chosen: its length, less one magnitude bit
    saved per bit of e_k.  Each value packs ``codeword | length << 8 |
    e_k << 12``; 0 where no codeword applies (rho = 0 in context 0).
    """
    rows = entries(initial)
    lut = np.zeros(8 << 8, dtype=np.uint32)
    for index in range(8 << 8):
        context, rho, emb = index >> 8, (index >> 4) & 0xF, index & 0xF
        if (emb & rho) != emb or (rho == 0 and context == 0):
            continue
        best = None
        for c, r, u_off, e_k, e_1, cwd, length in rows:
            if c != context or r != rho:
                continue
            if emb == 0 and u_off != 0:
                continue
            if emb and (u_off != 1 or (emb & e_k) != e_1):
                continue
            cost = length - bin(e_k).count("1")
            if best is None or cost < best[0]:
                best = (cost, cwd | length << 8 | e_k << 12)
        if best is None:
            raise ValueError(f"no CxtVLC codeword for context {context}, rho {rho}, emb {emb}")
        lut[index] = best[1]
    return lut


def uvlc_code(u: int) -> tuple[int, int, int, int, int, int]:
    """U-VLC bits of ``u >= 1`` (Table C.3): ``(prefix, prefix bits, suffix, suffix bits, extension, ext bits)``.

    Bits go out lowest first, so the prefix ``001`` is the value 4 in 3 bits.
    """
    if u < 1 or u > 74:
        raise ValueError(f"U-VLC codes 1..74, not {u}")
    if u == 1:
        return 1, 1, 0, 0, 0, 0
    if u == 2:
        return 2, 2, 0, 0, 0, 0
    if u <= 4:
        return 4, 3, u - 3, 1, 0, 0
    if u <= 32:
        return 0, 3, u - 5, 5, 0, 0
    return 0, 3, 28 + (u - 33) % 4, 5, (u - 33) // 4, 4


def uvlc_table() -> np.ndarray:
    """Rows ``u -> (prefix, prefix bits, suffix, suffix bits, extension, ext bits)`` for u = 0..74 (row 0 empty)."""
    table = np.zeros((75, 6), dtype=np.int32)
    for u in range(1, 75):
        table[u] = uvlc_code(u)
    return table


def uvlc_pair_table() -> np.ndarray:
    """The U-VLC bits of two quads of a pair outside the first row, index ``u0 * 75 + u1`` (0..74 each).

    A quad with u = 0 sends nothing; the bits run prefix, prefix, suffix,
    suffix, extension, extension (T.814 C.3.3).  Each value packs the bits
    (at most 24) and, from bit 32, their count.
    """
    codes = [uvlc_code(u) if u else (0, 0, 0, 0, 0, 0) for u in range(75)]
    table = np.zeros(75 * 75, dtype=np.int64)
    for u0 in range(75):
        for u1 in range(75):
            bits = n = 0
            for field in range(3):
                for code in (codes[u0], codes[u1]):
                    bits |= code[2 * field] << n
                    n += code[2 * field + 1]
            table[u0 * 75 + u1] = bits | n << 32
    return table


def uvlc_prefix_table() -> np.ndarray:
    """Decoding of the U-VLC prefixes of a pair of quads, index ``mode << 6 | next six bits`` (first bit lowest).

    `mode` has bit 0 set when the first quad sends a u (u_off = 1), bit 1
    for the second; the prefixes come first, the first quad's first.  Each
    value packs the two prefix values (1, 2, 3 or 5 as in
    :func:`uvlc_code`'s u for a suffix of 0; 0 for a quad that sends none)
    in bits 0..3 and 4..7 and the prefix bits read in bits 8 and up.
    """
    def prefix(bits: int) -> tuple[int, int]:
        for value, length in ((1, 1), (2, 2), (3, 3)):
            if bits >> (length - 1) & 1:
                return value, length
        return 5, 3

    table = np.zeros(4 << 6, dtype=np.int32)
    for mode in range(4):
        for bits in range(64):
            pre0 = pre1 = used = 0
            if mode & 1:
                pre0, used = prefix(bits)
            if mode & 2:
                pre1, n = prefix(bits >> used)
                used += n
            table[mode << 6 | bits] = pre0 | pre1 << 4 | used << 8
    return table
