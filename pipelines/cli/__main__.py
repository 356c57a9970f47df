"""``python -m sslpipe.pipelines.cli``: the ``sslpipe`` command."""

import sys

from .main import main

sys.exit(main())
