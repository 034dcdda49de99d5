import sys

from .pseudo.cli import main

sys.exit(main())
