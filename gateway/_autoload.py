"""Our pydicom plugins in every program where the package is installed.

The distribution installs ``dicom_gateway_autoload.pth`` at the root of
site-packages; Python's :mod:`site` runs its ``import`` line at start-up,
which imports this module unless ``DICOM_GATEWAY_NO_AUTOLOAD`` is set to a
value other than ``""`` or ``"0"``.  A plain program can then read our
private transfer syntaxes with ``pydicom.dcmread(path).pixel_array`` without
importing :mod:`gateway`.

Start-up stays cheap: this module imports neither pydicom nor numpy.  It puts
a finder at the front of :data:`sys.meta_path` that, when ``pydicom`` is first
imported, lets the normal finders locate it and runs
:func:`gateway.plugins.install` right after pydicom's ``__init__`` has
executed (``install`` only wraps pydicom's plugin look-ups; the codecs load on
the first look-up).  Failures of the hook are never raised: a broken
installation must not break pydicom, let alone every Python program.

What the hook installs is :func:`gateway.plugins.install`: our decoders for
private syntaxes only, and our encoders under the plugin name ``"gateway"``.
Importing :mod:`gateway` itself registers nothing; with the variable set, a
program gets the plugins by calling :func:`gateway.plugins.register`.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["ENV_VAR", "disabled", "enable"]

ENV_VAR = "DICOM_GATEWAY_NO_AUTOLOAD"
_TARGET = "pydicom"


def enable() -> None:
    """Install our pydicom plugins now if pydicom is loaded, else as soon as it is."""
    if _pixels_ready():
        from gateway.plugins import install

        install()
    elif _TARGET in sys.modules:
        # pydicom is being imported and loads us on the way (pylibjpeg reads
        # its decoder entry points, ours among them, while pydicom.pixels is
        # initialising): install at the first import after pydicom.pixels is
        # done, unless the variable turns implicit installation off.
        if not disabled():
            _add_finder(_WhenPixelsReady)
    else:
        _add_finder(_PydicomFinder)


def disabled() -> bool:
    """True when the environment turns implicit installation off."""
    import os

    return os.environ.get(ENV_VAR, "") not in ("", "0")


def _pixels_ready() -> bool:
    """True once ``pydicom.pixels`` has executed far enough to be wrapped."""
    pixels = sys.modules.get("pydicom.pixels")
    if pixels is None or getattr(getattr(pixels, "__spec__", None), "_initializing", False):
        return False
    return hasattr(pixels, "get_encoder") and hasattr(pixels, "get_decoder")


def _add_finder(kind: type) -> None:
    if not any(isinstance(finder, kind) for finder in sys.meta_path):
        sys.meta_path.insert(0, kind())


def _install_quietly() -> None:
    try:
        from gateway.plugins import install

        install()
    except Exception as exc:  # noqa: BLE001 - pydicom must keep working without us
        try:
            import warnings

            warnings.warn(f"the 'gateway' pydicom plugins are unavailable: {exc!r}", RuntimeWarning, stacklevel=2)
        except Exception:  # noqa: BLE001 - e.g. warnings turned into errors
            pass


class _PydicomFinder:
    """A one-shot meta path finder: pydicom's own spec, plus our plugins after it executes."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != _TARGET:
            return None
        try:
            sys.meta_path.remove(self)
        except ValueError:
            pass
        spec = None
        for finder in list(sys.meta_path):
            find_spec = getattr(finder, "find_spec", None)
            if find_spec is None:
                continue
            spec = find_spec(fullname, path, target)
            if spec is not None:
                break
        if spec is None:
            return None
        try:
            _hook(spec.loader)
        except Exception:  # noqa: BLE001 - pydicom loads as if we were not there
            pass
        return spec

    def invalidate_caches(self) -> None:
        pass


class _WhenPixelsReady:
    """A meta path finder that finds nothing, and installs our plugins once pydicom.pixels is done."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> None:
        if _pixels_ready():
            try:
                sys.meta_path.remove(self)
            except ValueError:
                pass
            _install_quietly()
        return None

    def invalidate_caches(self) -> None:
        pass


def _hook(loader: Any) -> None:
    """Make `loader` (pydicom's own) run :func:`_install_quietly` after executing pydicom."""
    if loader is None or isinstance(loader, type) or not hasattr(loader, "exec_module"):
        return
    exec_module = loader.exec_module

    def exec_then_install(module: Any) -> None:
        try:
            del loader.exec_module
        except AttributeError:
            pass
        exec_module(module)
        _install_quietly()

    loader.exec_module = exec_then_install


try:
    enable()
except Exception:  # noqa: BLE001 - imported at start-up by the .pth file
    pass
