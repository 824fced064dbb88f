"""`python -m web.cli`: the same program as the `localjobs` command."""

import sys

from web.cli import main

sys.exit(main())
