"""DICOM lossless recompression gateway."""

__version__ = "0.1.0"


def _install_pydicom_plugins() -> None:
    """Make our codecs pydicom's "gateway" plugins (registered on first use)."""
    from gateway.plugins import install

    install()


_install_pydicom_plugins()
