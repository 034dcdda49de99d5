import sys

from tfos_jobs.survey.cli import main

sys.exit(main())
