"""``python -m edgekd`` (and ``torchrun -m edgekd distill ...``): the edgekd command."""

from edgekd.cli import main

main()
