"""``python -m refimpl``: the same as the ``refimpl`` console script."""
import sys

from .cli import main

sys.exit(main())
