"""`python -m adapter4rec.cli ...` (e.g. under torchrun) is the `adapter4rec` command."""
import sys

from . import main

sys.exit(main())
