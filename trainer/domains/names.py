"""Names of the builtin domains (torch-free; the spec validates against it)."""

BUILTIN_DOMAINS = ("builtin:arith", "builtin:grid", "builtin:frames")
