import sys

from setdpo.cli import main

sys.exit(main())
