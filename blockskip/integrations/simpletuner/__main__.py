"""`python -m blockskip.integrations.simpletuner` (also under `accelerate launch -m`)."""

import sys

from .command import main

if __name__ == "__main__":
    sys.exit(main())
