"""``python -m ais``: the ``ais`` console script (:mod:`ais.cli`)."""

import sys

from ais.cli import main

sys.exit(main())
