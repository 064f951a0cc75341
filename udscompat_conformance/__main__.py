import sys

from udscompat_conformance.cli import main

sys.exit(main())
