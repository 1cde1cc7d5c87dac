"""`python -m bidsafe`: the `bidsafe` command, for a job that knows its interpreter but not the venv's PATH."""

import sys

from bidsafe.cli import main

sys.exit(main())
