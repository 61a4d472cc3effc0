"""`python -m kubemaas` is the same as the `kubemaas` command."""

import sys

from kubemaas.cli import main

sys.exit(main())
