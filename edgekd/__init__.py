from edgekd._version import __version__
