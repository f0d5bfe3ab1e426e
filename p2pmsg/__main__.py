"""``python -m p2pmsg`` runs the same command as ``p2pmsg``."""

import sys

from cli import main

sys.exit(main())
