"""``python -m supervisor.delta signature|delta|patch|serve ...``: see supervisor/delta/cli.py."""

import sys

from supervisor.delta.cli import main

sys.exit(main())
