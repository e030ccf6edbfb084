"""Old import path of the unit plan: it lives in contract/plan.py (torch-free, shared by every part).

Kept for one release (docs/design-notes.md); new code imports `contract.plan`.
"""

from contract.plan import *  # noqa: F401,F403
