"""DICOM lossless recompression gateway."""

__version__ = "0.1.0"
