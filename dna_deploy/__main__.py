"""`python -m dna_deploy ...` (and `torchrun -m dna_deploy train ...`)."""

from dna_deploy.cli.app import main
from dna_deploy.distributed import shutdown_distributed

try:
    main()
finally:
    shutdown_distributed()  # a rank that ends inside its process group makes NCCL warn (and may hang)
