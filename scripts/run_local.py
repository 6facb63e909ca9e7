"""Start brokers, workers and frontends on this machine (``make run``); see ``supervisor``.

Crashed processes are restarted with backoff (a crash loop gives up on that replica only);
Ctrl-C, SIGTERM or SIGHUP stop frontends, then workers, then brokers, SIGKILL after a grace;
a second Ctrl-C kills at once. Children die with the runner even when it is SIGKILLed.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a file, this directory comes first on sys.path; the repository root holds the packages.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from supervisor.cli import main

if __name__ == "__main__":
    sys.exit(main())
