"""`python -m foresight ...` (also what `torchrun -m foresight` runs)."""

from foresight.cli import main

main()
