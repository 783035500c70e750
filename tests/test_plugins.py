"""Our codecs as pydicom plugins: ``ds.compress(..., encoding_plugin="gateway")``
and ``pixel_array`` work in plain pydicom programs, for every registered codec."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import numpy as np
import pydicom
import pytest

import gateway.codecs as registry
from gateway import _autoload, plugins
from gateway.codecs import all_codecs, get_codec
from gateway.codecs.base import FrameInfo
from tests.images import REFERENCE_IMAGES, make_dataset
from tests.test_conformance_sweep import _frames as sweep_frames
from tests.test_conformance_sweep import _info as sweep_info

REPO = Path(__file__).resolve().parent.parent


def _as_frames(array: np.ndarray, info: FrameInfo, count: int) -> list[np.ndarray]:
    return [np.ascontiguousarray(f) for f in np.asarray(array).reshape((count, *info.shape))]


def _standard() -> list:
    return [pytest.param(c, id=c.name) for c in all_codecs() if not c.private]


def _cases(codec) -> list[tuple[str, FrameInfo, list[np.ndarray]]]:
    """Reference images the codec supports: one per (samples, bits, sign) kind."""
    seen, cases = set(), []
    for ident, info, frames in REFERENCE_IMAGES:
        key = (info.samples_per_pixel, info.bits_allocated, info.bits_stored, info.signed, len(frames) > 1)
        if key in seen or codec.supports(info):
            continue
        seen.add(key)
        cases.append((ident, info, frames))
    return cases


@pytest.fixture(autouse=True)
def _registered() -> None:
    plugins.register()


@pytest.mark.parametrize("codec", _standard())
def test_compress_with_gateway_plugin_round_trips(codec) -> None:
    cases = _cases(codec)
    assert cases, f"no reference image fits {codec.name}"
    for ident, info, frames in cases:
        ds = make_dataset(info, frames)
        ds.compress(codec.uid, encoding_plugin="gateway")
        assert ds.file_meta.TransferSyntaxUID == codec.uid, ident
        ds.pixel_array_options(decoding_plugin="gateway")
        assert all(
            np.array_equal(a, b) for a, b in zip(_as_frames(ds.pixel_array, info, len(frames)), frames)
        ), ident


def _other_decoders(codec) -> list[str]:
    """pydicom's decoder plugins for `codec`'s syntax other than ours, or skip when it has none."""
    from pydicom.pixels import get_decoder

    # Pillow, where installed (dask's dashboard brings it), refuses 16-bit colour by design.
    others = [p for p in get_decoder(codec.uid).available_plugins if p not in ("gateway", "pillow")]
    if not others:
        pytest.skip(f"pydicom has no other decoder for {codec.keyword}")
    return others


def _assert_read_by(readers: list[str], codec, ident: str, info: FrameInfo, frames: list[np.ndarray]) -> None:
    """What our plugin writes, read by each of `readers` as ``pixel_array``: the frames, in the dtype
    Bits Allocated and Pixel Representation give, signed values sign-extended from Bits Stored."""
    for plugin in readers:
        ds = make_dataset(info, frames)
        ds.compress(codec.uid, encoding_plugin="gateway")
        ds.pixel_array_options(decoding_plugin=plugin)
        array = ds.pixel_array
        assert array.dtype == info.dtype, f"{ident} via {plugin}: {array.dtype}"
        got = _as_frames(array, info, len(frames))
        for number, (a, b) in enumerate(zip(got, frames, strict=True), start=1):
            assert np.array_equal(a, b), f"{ident} via {plugin}: frame {number} {a.ravel()[:4]} for {b.ravel()[:4]}"


@pytest.mark.parametrize("codec", _standard())
def test_gateway_output_decodes_with_pydicoms_default_plugins(codec) -> None:
    others = _other_decoders(codec)
    for ident, info, frames in _cases(codec):
        _assert_read_by(others, codec, ident, info, frames)


# Every Bits Stored below 16 in a 16-bit container, each as four frames: the most negative (or zero)
# and the most positive value, noise over the whole range, and a checkerboard of the two extremes.
_NARROW = [pytest.param(samples, stored, signed, id=f"16_{stored}{'s' if signed else 'u'}_{samples}")
           for stored in range(2, 16) for samples, signed in ((1, True), (1, False), (3, False))]


@pytest.mark.parametrize(("samples", "stored", "signed"), _NARROW)
@pytest.mark.parametrize("codec", _standard())
def test_pydicoms_default_plugins_read_narrow_values_in_16_bit_containers(codec, samples, stored, signed) -> None:
    info = sweep_info(5, 11, samples, 16, stored, signed)
    _assert_read_by(_other_decoders(codec), codec, f"16_{stored}", info, sweep_frames(info, stored))


@pytest.mark.parametrize("codec", _standard())
def test_planar_configuration_1_source(codec) -> None:
    info = FrameInfo(9, 7, 3, 8, 8, 0, "RGB")
    if codec.supports(info):
        pytest.skip(codec.supports(info))
    frame = np.random.default_rng(3).integers(0, 256, info.shape).astype(np.uint8)
    ds = make_dataset(info, [frame], planar=1)
    ds.compress(codec.uid, encoding_plugin="gateway")
    ds.pixel_array_options(decoding_plugin="gateway")
    assert np.array_equal(ds.pixel_array, frame)


def test_unsupported_image_is_refused() -> None:
    codec = get_codec("JPEGLosslessSV1")
    info = FrameInfo(4, 4, 1, 32, 16)
    ds = make_dataset(info, [np.zeros(info.shape, np.uint32)])
    with pytest.raises((RuntimeError, ValueError)):
        ds.compress(codec.uid, encoding_plugin="gateway")


class _PrivateForTest:
    """A private syntax (a fresh 2.25 UID) carrying JPEG Lossless streams."""

    name: ClassVar[str] = "private-plugin-test"
    uid: ClassVar[str] = "2.25.270161537920245123795614082402331742413"
    keyword: ClassVar[str] = "PrivatePluginTest"
    private: ClassVar[bool] = True

    def supports(self, info: FrameInfo) -> str | None:
        return get_codec("JPEGLosslessSV1").supports(info)

    def encode_frame(self, frame: np.ndarray, info: FrameInfo) -> bytes:
        return get_codec("JPEGLosslessSV1").encode_frame(frame, info)

    def decode_frame(self, data: bytes, info: FrameInfo) -> np.ndarray:
        return get_codec("JPEGLosslessSV1").decode_frame(data, info)


@pytest.fixture
def private_codec():
    codec = registry.register(_PrivateForTest())
    try:
        plugins.register()
        yield codec
    finally:
        registry._REGISTRY.pop(codec.uid, None)


def test_private_syntax_written_and_read_back_by_pydicom(private_codec, tmp_path: Path) -> None:
    info = FrameInfo(11, 13, 1, 16, 12, 1)
    frames = [np.random.default_rng(i).integers(-2048, 2048, info.shape).astype(np.int16) for i in range(2)]
    ds = make_dataset(info, frames)
    ds.compress(private_codec.uid, encoding_plugin="gateway")
    assert ds.file_meta.TransferSyntaxUID == private_codec.uid
    path = tmp_path / "private.dcm"
    # pydicom asks for the data set encoding of a private syntax when writing.
    ds.save_as(path, enforce_file_format=True, implicit_vr=False, little_endian=True)
    back = pydicom.dcmread(path)
    assert back.file_meta.TransferSyntaxUID == private_codec.uid
    assert back.Rows == info.rows  # the data set after the meta was read as explicit VR LE
    got = _as_frames(back.pixel_array, info, 2)
    assert all(np.array_equal(a, b) for a, b in zip(got, frames))


def test_pylibjpeg_entry_point_function() -> None:
    codec = get_codec("JPEGLosslessSV1")
    info = FrameInfo(5, 6, 1, 16, 10, 0)
    frame = np.arange(30, dtype=np.uint16).reshape(5, 6) * 30
    stream = codec.encode_frame(frame, info)
    options = {
        "rows": 5,
        "columns": 6,
        "bits_allocated": 16,
        "bits_stored": 10,
        "transfer_syntax_uid": codec.uid,
    }
    assert np.array_equal(plugins.decode_pixel_data(stream, **options), frame)
    raw = plugins.decode_pixel_data(stream, version=2, **options)
    assert isinstance(raw, bytearray) and np.array_equal(np.frombuffer(raw, "<u2").reshape(5, 6), frame)


_STANDARD_ONLY_WHEN_ASKED = """
import numpy as np, pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import get_decoder, get_encoder
from pydicom.uid import ExplicitVRLittleEndian, JPEGLosslessSV1, JPEGLSLossless
ds = Dataset()
ds.file_meta = FileMetaDataset()
ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
ds.Rows, ds.Columns, ds.SamplesPerPixel = 3, 4, 1
ds.PhotometricInterpretation = "MONOCHROME2"
ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
frame = (np.arange(12, dtype=np.uint16) * 5000).reshape(3, 4)
ds.PixelData = frame.tobytes()
ds.compress(JPEGLosslessSV1, encoding_plugin="gateway")  # encoding by name: the hook provides it
hooked = [uid.keyword for uid in (JPEGLosslessSV1, JPEGLSLossless) if "gateway" in get_decoder(uid).available_plugins]
from gateway.plugins import register
register()  # the program asks: our decoders for standard syntaxes too
ds.pixel_array_options(decoding_plugin="gateway")
assert np.array_equal(ds.pixel_array, frame)
asked = [uid.keyword for uid in (JPEGLosslessSV1, JPEGLSLossless) if "gateway" in get_decoder(uid).available_plugins]
print(hooked, asked)
"""


def test_standard_decoders_are_ours_only_when_a_program_asks() -> None:
    """The installed hook adds our decoders for private syntaxes only; register() adds the rest."""
    out = _run(_STANDARD_ONLY_WHEN_ASKED, REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[] ['JPEGLosslessSV1', 'JPEGLSLossless']", out.stderr


_IMPORT_HAS_NO_EFFECT = """
import sys
import gateway, gateway.codecs, gateway.pipeline
before = "pydicom.pixels" in sys.modules
import pydicom.pixels
from pydicom.pixels import get_decoder
from pydicom.uid import JPEGLSLossless
print(before, getattr(pydicom.pixels.get_decoder, "_gateway_wrapped", False),
      "gateway" in get_decoder(JPEGLSLossless).available_plugins)
"""


def test_import_gateway_has_no_side_effects() -> None:
    """With the hook off, importing the package (pipeline included) leaves pydicom's plugins alone."""
    out = _run(_IMPORT_HAS_NO_EFFECT, REPO, **{_autoload.ENV_VAR: "1"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[1:] == ["False", "False"], out.stdout


def test_plugin_module_contract() -> None:
    for codec in all_codecs():
        assert plugins.is_available(codec.uid)
        assert codec.uid in plugins.ENCODER_DEPENDENCIES
        assert codec.uid in plugins.DECODER_DEPENDENCIES
    assert not plugins.is_available("1.2.840.10008.1.2.4.50")
    plugins.register()  # idempotent
    from pydicom.pixels import get_encoder

    assert "gateway" in get_encoder(copy.copy(get_codec("JPEGLosslessSV1").uid)).available_plugins


def _private() -> list:
    return [pytest.param(c, id=c.name) for c in all_codecs() if c.private and c.uid != _PrivateForTest.uid]


def test_pyproject_declares_pylibjpeg_entry_points_for_private_syntaxes_only() -> None:
    import tomllib

    with open(REPO / "pyproject.toml", "rb") as handle:
        project = tomllib.load(handle)["project"]
    declared = project.get("entry-points", {}).get("pylibjpeg.pixel_data_decoders", {})
    for codec in all_codecs():
        if codec.uid == _PrivateForTest.uid:
            continue
        if codec.private:
            assert declared.get(codec.uid) == "gateway.plugins:decode_pixel_data", codec.name
        else:
            assert codec.uid not in declared, codec.name


@pytest.mark.parametrize("codec", _private())
def test_private_file_read_by_a_plain_pydicom_program(codec, tmp_path: Path) -> None:
    path, expected = _private_file(codec, tmp_path)
    program = f"""
import numpy as np, pydicom
import gateway
ds = pydicom.dcmread({str(path)!r})
expected = np.load({str(expected)!r})
assert np.array_equal(ds.pixel_array.reshape(expected.shape), expected)
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", program], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok", codec.name


@pytest.mark.parametrize("codec", _private())
def test_private_pylibjpeg_entry_point_function(codec) -> None:
    ident, info, frames = next(c for c in REFERENCE_IMAGES if codec.supports(c[1]) is None)
    stream = codec.encode_frame(frames[0], info)
    options = {
        "rows": info.rows,
        "columns": info.columns,
        "samples_per_pixel": info.samples_per_pixel,
        "bits_allocated": info.bits_allocated,
        "bits_stored": info.bits_stored,
        "pixel_representation": info.pixel_representation,
        "photometric_interpretation": info.photometric_interpretation,
        "transfer_syntax_uid": codec.uid,
    }
    assert np.array_equal(plugins.decode_pixel_data(stream, **options), frames[0]), ident


def test_private_version_is_a_compress_option() -> None:
    """``ds.compress(..., version=2)`` writes version 2 of our private syntax; without it, the module's default."""
    from pydicom.encaps import generate_frames

    from gateway.codecs import private

    ident, info, frames = next(c for c in REFERENCE_IMAGES if private.supports(c[1]) is None and len(c[2]) > 1)
    for options, version in (({}, private.VERSION), ({"version": 1}, 1), ({"version": 2}, 2)):
        ds = make_dataset(info, frames)
        ds.compress(private.UID, encoding_plugin="gateway", **options)
        streams = list(generate_frames(ds.PixelData, number_of_frames=len(frames)))
        assert [s[4] for s in streams] == [version] * len(frames), ident
        decoded = [private.decode(s, info) for s in streams]
        assert all(np.array_equal(a, b) for a, b in zip(decoded, frames, strict=True)), ident
    with pytest.raises(RuntimeError, match="version 3 is not one of"):  # pydicom wraps what the plugin raised
        make_dataset(info, frames).compress(private.UID, encoding_plugin="gateway", version=3)


def _private_file(codec, tmp_path: Path) -> tuple[Path, Path]:
    """A multi-frame file in `codec`'s private syntax, and the expected frames (.npy)."""
    ident, info, frames = next(c for c in REFERENCE_IMAGES if codec.supports(c[1]) is None and len(c[2]) > 1)
    ds = make_dataset(info, frames)
    ds.compress(codec.uid, encoding_plugin="gateway")
    path = tmp_path / "private.dcm"
    ds.save_as(path, enforce_file_format=True, implicit_vr=False, little_endian=True)
    np.save(tmp_path / "expected.npy", np.stack(frames))
    return path, tmp_path / "expected.npy"


def _run(program: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != _autoload.ENV_VAR}
    environ.update(env)
    # Run outside the checkout: the installed package is what is tested.
    return subprocess.run(
        [sys.executable, "-c", program], cwd=cwd, env=environ, capture_output=True, text=True, timeout=300
    )


_PLAIN_READ = """
import sys
started = sorted(m for m in ("gateway", "numpy", "pydicom") if m in sys.modules)
import numpy as np, pydicom
ds = pydicom.dcmread({path!r})
expected = np.load({expected!r})
try:
    same = np.array_equal(ds.pixel_array.reshape(expected.shape), expected)
except Exception as exc:
    same = type(exc).__name__
print(started, same)
"""


@pytest.mark.parametrize("codec", _private())
def test_private_file_read_by_a_program_that_never_imports_gateway(codec, tmp_path: Path) -> None:
    """The installed .pth hook: only gateway (no numpy, no pydicom) loads at start-up."""
    path, expected = _private_file(codec, tmp_path)
    out = _run(_PLAIN_READ.format(path=str(path), expected=str(expected)), tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['gateway'] True", out.stderr


def test_autoload_can_be_turned_off(tmp_path: Path) -> None:
    codec = _private()[0].values[0]
    path, expected = _private_file(codec, tmp_path)
    program = _PLAIN_READ.format(path=str(path), expected=str(expected))
    out = _run(program, tmp_path, **{_autoload.ENV_VAR: "1"})
    assert out.returncode == 0, out.stderr
    started, same = out.stdout.strip().rsplit(" ", 1)
    assert started == "[]" and same != "True", out.stdout
    out = _run("import gateway.plugins\ngateway.plugins.register()\n" + program, tmp_path,
               **{_autoload.ENV_VAR: "1"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith(" True"), out.stderr
    out = _run(program, tmp_path, **{_autoload.ENV_VAR: "0"})
    assert out.stdout.strip() == "['gateway'] True", out.stderr


def test_autoload_hook_swallows_its_failures(tmp_path: Path) -> None:
    """A failing install() does not break ``import pydicom`` (the hook loaded as by the .pth)."""
    broken = tmp_path / "broken"
    (broken / "gateway").mkdir(parents=True)
    (broken / "gateway" / "__init__.py").write_text((REPO / "gateway" / "__init__.py").read_text())
    (broken / "gateway" / "_autoload.py").write_text((REPO / "gateway" / "_autoload.py").read_text())
    (broken / "gateway" / "plugins.py").write_text(
        "def decode_pixel_data(*args, **kwargs):\n    raise RuntimeError('broken')\n\n\n"
        "def install():\n    raise RuntimeError('broken')\n"
    )
    # The variable keeps the installed .pth from loading the real package first.
    program = f"import sys; sys.path.insert(0, {str(broken)!r})\n"
    program += "import gateway._autoload\nimport pydicom\nprint(pydicom.dcmread, gateway.__file__)"
    out = _run(program, tmp_path, **{_autoload.ENV_VAR: "1"})
    assert out.returncode == 0, out.stderr
    assert str(broken) in out.stdout
    assert "'gateway' pydicom plugins are unavailable" in out.stderr and "broken" in out.stderr
