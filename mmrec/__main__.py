"""`python -m mmrec ...`: the `mmrec` command, as `torchrun -m mmrec train ...` runs it on each rank."""
import sys

from mmrec.cli import main

sys.exit(main())
