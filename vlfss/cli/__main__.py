"""`python -m vlfss.cli ...` (torchrun uses this form)."""

import sys

from . import main

sys.exit(main())
