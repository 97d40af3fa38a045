import sys

from flatness.cli import main

sys.exit(main())
