"""The ``edgekd`` command: parses, calls edgekd.api, renders. Nothing else lives here.

``common`` holds the group and the shared option handling; each command module registers its commands on it."""

from edgekd.cli import bench, compile, info  # noqa: F401  (registers the commands)
from edgekd.cli.common import main

__all__ = ["main"]

if __name__ == "__main__":
    main()
