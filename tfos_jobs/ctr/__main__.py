import sys

from tfos_jobs.ctr.cli import main

sys.exit(main())
