"""The ``visiontel`` command."""

from visiontel.cli._main import main
from visiontel.cli.version import __version__

__all__ = ["__version__", "main"]
