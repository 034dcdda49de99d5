import sys

from tfos_jobs.registry.cli import main

sys.exit(main())
