"""`python -m detcost.cli`, as the `detcost` command."""

import sys

from detcost.cli import main

sys.exit(main())
