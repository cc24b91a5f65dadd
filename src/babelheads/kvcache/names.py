"""The names of the compression policies and their settings' choices, apart from the policies so the
CLI lists them without loading torch."""

POLICIES = ("full", "head-split", "window", "random-heads", "head-budget")
KV_MAPPINGS = ("max", "mean")
TOKEN_RULES = ("recent", "key-norm")
