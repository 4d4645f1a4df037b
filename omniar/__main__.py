"""`python -m omniar ...`: the `omniar` command."""

import sys

from omniar.cli import main

sys.exit(main())
