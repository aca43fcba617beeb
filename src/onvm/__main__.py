"""``python -m onvm``: the ``onvm`` command."""

import sys

from onvm.cli.main import main

sys.exit(main())
