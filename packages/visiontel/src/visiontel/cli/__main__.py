"""``python -m visiontel.cli`` is the ``visiontel`` command."""

import sys

from visiontel.cli._main import main

sys.exit(main())
