"""``python -m engine`` is the ``ozbulk`` command."""

import sys

from engine.cli import main

sys.exit(main())
