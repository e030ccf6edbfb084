"""Old import path of the embedded broker's transport (kombu loads it as `copd.fsbroker:Transport`)."""

from contract.fsbroker import *  # noqa: F401,F403
from contract.fsbroker import Transport  # noqa: F401
