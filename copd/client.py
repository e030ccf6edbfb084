"""Old import path of the REST client: it lives in contract/client.py. Kept for one release."""

from contract.client import *  # noqa: F401,F403
from contract.client import _clean, _error  # noqa: F401
