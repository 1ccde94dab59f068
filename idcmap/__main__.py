"""``python -m idcmap``."""

import sys

from idcmap.cli.main import main

sys.exit(main())
