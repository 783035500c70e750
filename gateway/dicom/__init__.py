"""DICOM at the byte level: UIDs and transfer syntaxes, the instance identity, file meta.

The bottom layer of the gateway: it imports nothing else of ours, so every
other package can rely on it in every process (the receiver, the worker
processes, the command line) without registering anything first.
"""
