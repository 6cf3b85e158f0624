"""``python -m durable_ext start [APP_DIR]``: see ``durable_ext.cli``."""

import sys

from .cli import main

sys.exit(main())
