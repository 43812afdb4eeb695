"""`python -m hmdbattn` (also what `torchrun -m hmdbattn` runs)."""

from hmdbattn.cli import main

main()
