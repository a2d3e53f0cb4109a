import sys

from visiontel.gpu.testing import main

sys.exit(main())
