"""DICOM lossless recompression gateway.

Importing the package has no side effects: nothing is registered with
pydicom.  :func:`gateway.plugins.register` makes our codecs pydicom plugins
when a program asks for them (see :mod:`gateway.plugins`).
"""

__version__ = "0.1.0"
