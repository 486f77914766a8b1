"""``python -m devtools.demo_api``: serve the demo API until SIGTERM/SIGINT."""

import sys

from devtools.demo_api.server import main

sys.exit(main())
