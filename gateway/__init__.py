"""DICOM lossless recompression gateway."""

__version__ = "0.1.0"


def _install_pydicom_plugins() -> None:
    """Make our codecs pydicom's "gateway" plugins (now if pydicom is loaded, else when it is)."""
    from gateway._autoload import enable

    enable()


_install_pydicom_plugins()
