"""Optional dependencies (pandas, matplotlib), with an error that says what to install."""

from __future__ import annotations

import importlib
from typing import Any


def _require(module: str, what: str) -> Any:
    """Imports `module`, or raises ImportError naming `what` needed it and how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(
            f"{what} needs {module.split('.')[0]}. Install it with "
            "`pip install 'keras-repro[notebooks]'`."
        ) from None


def require_pandas(what: str) -> Any:
    """The pandas module, or a clear ImportError."""
    return _require("pandas", what)


def require_pyplot(what: str) -> Any:
    """matplotlib.pyplot, or a clear ImportError."""
    return _require("matplotlib.pyplot", what)
