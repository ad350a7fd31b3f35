"""A training script with a layer whose every 4th training step adds noise from fresh
entropy: `keras-repro audit` names batch 3 and the layer's `drift` weight."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))

from tests.scripts.audit.models import build_noisy as build_model  # noqa: E402,F401
from tests.scripts.audit.models import data  # noqa: E402,F401
