"""``python -m cocoon`` is the ``cocoon`` command."""

import sys

from cocoon.cli import main

sys.exit(main())
