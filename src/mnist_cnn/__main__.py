"""``python -m mnist_cnn`` is the ``mnist-cnn`` command."""

import sys

from .cli import main

sys.exit(main())
