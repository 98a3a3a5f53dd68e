"""`python -m dna_deploy ...` (and `torchrun -m dna_deploy train ...`)."""

from dna_deploy.cli.app import main

main()
