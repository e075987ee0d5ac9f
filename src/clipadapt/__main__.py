import sys

from clipadapt.cli import main

sys.exit(main())
