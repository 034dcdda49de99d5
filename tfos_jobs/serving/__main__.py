import sys

from tfos_jobs.serving.cli import main

sys.exit(main())
