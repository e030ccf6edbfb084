"""Old import path of the settings: they live in contract/settings.py. Kept for one release."""

from contract.settings import *  # noqa: F401,F403
