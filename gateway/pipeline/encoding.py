"""Carrying a dataset's attributes into another VR encoding or byte order with their value bytes unchanged.

A recompressed instance that arrived implicit VR or big endian is written
explicit VR little endian.  Left to pydicom, writing it in another encoding
parses every value and encodes it again: trailing spaces of a text value are
dropped, bytes that are not valid in the Specific Character Set become
U+FFFD, a decimal string loses its padding.  :func:`reencode` instead keeps
each element's value bytes as they arrived and gives them the VR the
standard says (PS3.5 6.2.2 and Annex A: the data dictionary, a private
creator's dictionary, UN for what no dictionary knows; US or SS by Pixel
Representation, OB or OW as Annex A.1 and A.2 say), swapping the bytes of
word-sized binary values for a big endian source (PS3.5 7.3).  The dataset
is then marked as encoded the new way, so that pydicom writes those raw
elements as they are.
"""

from __future__ import annotations

from pydicom import Dataset
from pydicom.dataelem import DataElement, RawDataElement, convert_raw_data_element
from pydicom.filewriter import correct_ambiguous_vr_element
from pydicom.hooks import raw_element_vr

__all__ = ["reencode", "needs_reencoding"]

# Byte size of the words of each binary VR: what changes with the byte order (PS3.5 7.3).  An AT value
# is a pair of 16-bit words.  UN is opaque: its bytes are kept as they are (PS3.5 6.2.2).
_WORD = {"US": 2, "SS": 2, "OW": 2, "AT": 2, "UL": 4, "SL": 4, "FL": 4, "OL": 4, "OF": 4,
         "FD": 8, "OD": 8, "SV": 8, "UV": 8, "OV": 8}

# VRs whose explicit VR header has a 32-bit length (PS3.5 7.1.2).
_LONG = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"})

_UNDEFINED = 0xFFFFFFFF


def needs_reencoding(ds: Dataset, implicit: bool) -> bool:
    """True when `ds` was read in another encoding than the one it is to be written in (little endian,
    `implicit` VR or not)."""
    read_implicit, read_little = ds.original_encoding
    return read_little is False or (read_implicit is not None and read_implicit != implicit)


def _swapped(value: bytes, size: int) -> bytes:
    if size < 2 or len(value) % size:
        return value
    data = bytearray(value)
    for start in range(size):
        data[start::size] = value[size - 1 - start::size]
    return bytes(data)


def _vr(ds: Dataset, raw: RawDataElement, ancestors: list[Dataset]) -> str:
    """The VR `raw` (read implicit VR) has, as pydicom decides it when reading, its ambiguity resolved."""
    data: dict = {}
    raw_element_vr(raw, data, ds=ds)
    vr = str(data["VR"])
    if " or " in vr:
        element = convert_raw_data_element(raw._replace(VR=vr), ds=ds)
        vr = str(correct_ambiguous_vr_element(element, ds, True, ancestors).VR)
    return vr


def _reencode(ds: Dataset, implicit: bool, keep: DataElement | None, ancestors: list[Dataset],
              read_implicit: bool, read_little: bool) -> None:
    own_implicit, own_little = ds.original_encoding
    read_implicit = read_implicit if own_implicit is None else own_implicit
    read_little = read_little if own_little is None else own_little
    ancestors = [ds, *ancestors]
    for tag in list(ds._dict):
        element = ds._dict[tag]
        if element is keep:
            continue
        if isinstance(element, RawDataElement):
            if element.value is None and element.length not in (0, _UNDEFINED):
                element = ds.get_item(tag)  # a value left in its file is read now
            vr = element.VR or _vr(ds, element, ancestors)
            if vr != "SQ":
                value = element.value
                if not read_little and value and vr in _WORD:
                    value = _swapped(value, _WORD[vr])
                if not implicit and vr not in _LONG and value is not None and len(value) > 0xFFFF:
                    vr = "UN"  # too long for a 16-bit length: PS3.5 6.2.2 note
                ds._dict[tag] = element._replace(VR=vr, value=value, is_implicit_VR=implicit, is_little_endian=True)
                continue
            element = ds[tag]  # the items of a sequence, parsed; their elements stay raw
        if element.VR == "SQ":
            for item in element.value or ():
                _reencode(item, implicit, None, ancestors, read_implicit, read_little)
            continue
        value = element.value
        if not read_little and isinstance(value, (bytes, bytearray)) and element.VR in _WORD:
            element.value = _swapped(bytes(value), _WORD[element.VR])  # binary values pydicom keeps as bytes
        if " or " in element.VR:
            correct_ambiguous_vr_element(element, ds, True, ancestors)
    ds.set_original_encoding(implicit, True)


def reencode(ds: Dataset, *, implicit: bool = False, keep: DataElement | None = None) -> None:
    """Make `ds`, read in any encoding, be written little endian with `implicit` VR or not, value bytes kept.

    Every element still raw keeps its value bytes (word-swapped if read big
    endian) and gets its resolved VR; sequences are followed into their
    items.  Elements pydicom has already parsed keep their parsed values
    (binary ones word-swapped when read big endian).  `keep` (the new Pixel
    Data, already in the target encoding) is left alone.  pydicom may raise
    about an element it cannot parse.
    """
    read_implicit, read_little = ds.original_encoding
    _reencode(ds, implicit, keep, [], bool(read_implicit), read_little is not False)
