"""``python -m engine`` is the ``ozbulk`` command."""

import sys

from engine import interruption

# Before the command's imports: a SIGTERM during start-up exits 130 with a line, not 143.
interruption.install()

from engine.cli import main  # noqa: E402

sys.exit(main())
