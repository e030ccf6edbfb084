"""Old import path of the run spec: it lives in contract/spec.py (torch-free, shared by every part).

Kept for one release (docs/design-notes.md); new code imports `contract.spec`.
"""

from contract.spec import *  # noqa: F401,F403
from contract.spec import _Model  # noqa: F401
