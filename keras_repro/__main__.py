"""`python -m keras_repro` runs the `keras-repro` command."""

import sys

from keras_repro.cli import main

sys.exit(main())
