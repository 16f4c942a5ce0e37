"""``python -m testing.fakellm``: run the fake server until SIGTERM or SIGINT."""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
