"""`python -m rmcs_cli`, the same as the `rmcs` console script."""

import sys

from .main import main

sys.exit(main())
