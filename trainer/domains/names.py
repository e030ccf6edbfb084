"""Names of the builtin domains (torch-free; the spec validates against it)."""

BUILTIN_DOMAINS = ("builtin:arith", "builtin:grid", "builtin:frames",
                   # conflict domains (trainer/domains/marked.py), for the divergence-cost suites
                   "builtin:marked_sum", "builtin:marked_absdiff", "builtin:marked_max",
                   "builtin:offset_0", "builtin:offset_1", "builtin:offset_2",
                   "builtin:implicit_sum", "builtin:implicit_absdiff", "builtin:implicit_max")
