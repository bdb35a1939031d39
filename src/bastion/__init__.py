"""bastion: secure Linux edge devices and their fleets end to end.

The package is layered (see ARCHITECTURE.md): ``formats`` are pure codecs,
``tpm`` is the root of trust, ``trust`` and ``storage`` build on them, the
``build``/``device``/``server`` planes orchestrate, and ``cli`` is a thin shell.
"""

__version__ = "0.1.0"
