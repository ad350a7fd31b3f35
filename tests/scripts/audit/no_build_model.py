"""A script with data() but no build_model(): `keras-repro audit` refuses it (exit 2)."""

import numpy as np


def data():
    return np.zeros((4, 2), "float32"), np.zeros((4,), "int32")
