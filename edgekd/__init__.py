import os

from edgekd._version import __version__

# ONNX Runtime writes a device id and a database under ~/.cache/Microsoft on import unless this is set
# first; a compiler has no business writing into the user's home.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

__all__ = ["__version__"]
