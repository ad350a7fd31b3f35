"""`audit` and `bisect`: run a stretch of training again and name where it differs.

The package: `runs` (audit, bisect and the fresh process), `steps` (the data of the runs
and one run), `hazards` (what can be seen without training) and `reports`. See
`keras_repro.tools.audit.runs` for what they can and cannot find.

Example:

>>> print(kr.audit(build_model, x, y, steps=20))   # doctest: +SKIP
"""

from keras_repro.tools.audit.hazards import find_hazards
from keras_repro.tools.audit.reports import AuditDivergence, AuditReport, BisectReport, Check
from keras_repro.tools.audit.runs import audit, bisect, validate_checkpoint
from keras_repro.tools.audit.steps import validate_options
from keras_repro.tools.nesting import CHILD_ENVIRONMENT_VARIABLE

__all__ = [
    "CHILD_ENVIRONMENT_VARIABLE",
    "AuditDivergence",
    "AuditReport",
    "BisectReport",
    "Check",
    "audit",
    "bisect",
    "find_hazards",
    "validate_checkpoint",
    "validate_options",
]
