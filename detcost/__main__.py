"""`python -m detcost`, as the `detcost` command."""

import sys

from detcost.cli import main

sys.exit(main())
