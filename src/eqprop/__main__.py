"""``python -m eqprop`` is the ``eqprop`` command."""

import sys

from .cli.main import main

sys.exit(main())
