"""Tiny random weights in the exact formats users have, built by the tests (nothing downloaded).

One module per backbone family (``tests/builders/<module>.py``) exposes builder functions that
write weights into a given folder and return the path to pass as ``backbone_weights``.
``build_backbone_weights(name, folder, fmt)`` dispatches by registry name and format.
"""
