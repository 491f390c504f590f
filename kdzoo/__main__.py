"""``python -m kdzoo COMMAND ...``, the same as the ``kdzoo`` console script."""
import sys

from .cli import main

sys.exit(main())
