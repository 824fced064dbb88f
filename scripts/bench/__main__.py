"""`python -m scripts.bench` or `python scripts/bench`: the options are in scripts/bench/cli.py."""

import sys
from pathlib import Path

if not __package__:
    # `python scripts/bench`: sys.path[0] is this folder, whose module names (logs, jobs, ...)
    # must not shadow anything; import the package from the checkout instead.
    HERE = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
    sys.path.insert(0, str(HERE.parent.parent))

from scripts.bench.cli import main

raise SystemExit(main())
