import sys

from sigma.cli import main

sys.exit(main())
