"""``python -m engine`` is the ``ozbulk`` command."""

import gc
import sys

from engine import interruption
from engine.errors import ExitCode

# Paused while the command's modules load, resumed once they are: see engine.cli.run.
gc.disable()

try:
    # Before the command's imports: a SIGTERM during start-up exits 130 with a line, not 143.
    interruption.install()
    from engine.cli import run
except KeyboardInterrupt as interrupt:
    sys.stderr.write(f"ozbulk: {interruption.describe(interrupt)}\n")
    sys.exit(ExitCode.INTERRUPTED)

run()
