"""``python -m eightbit``: the ``eightbit`` command line (``python -m eightbit env`` for the environment report)."""
from .cli import main

main()
