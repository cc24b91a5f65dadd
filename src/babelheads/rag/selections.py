"""The names of the retrieval loop's selections, apart from the loop so the CLI lists them without
loading torch."""

SELECTIONS = ("dynamic", "static", "dragin", "question", "none")
HEAD_GUIDED = ("dynamic", "static", "dragin")
