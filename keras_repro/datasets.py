"""Small real datasets shipped with the package, so demos and tests need no download."""

from __future__ import annotations

import importlib.resources

import numpy as np


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 8x8 handwritten digits (1,797 images, 10 classes).

    From the UCI "Optical Recognition of Handwritten Digits" data set (E. Alpaydin,
    C. Kaynak, 1998; CC BY 4.0), as bundled by scikit-learn. Pixels are integers
    0..16.

    Returns:
        (images, labels): uint8 arrays of shape (1797, 8, 8) and (1797,).

    Example:

    >>> images, labels = load_digits()
    >>> images.shape, labels.shape
    ((1797, 8, 8), (1797,))
    """
    resource = importlib.resources.files("keras_repro") / "data" / "digits.npz"
    with resource.open("rb") as handle, np.load(handle) as archive:
        return archive["images"].copy(), archive["labels"].copy()
