"""Old import path of the builtin domain names: their one definition is contract.vocab.BUILTIN_DOMAINS."""

from contract.vocab import BUILTIN_DOMAINS  # noqa: F401
