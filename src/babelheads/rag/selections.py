"""The names of the retrieval loop's selections, apart from the loop so the CLI lists them without
loading torch."""

SELECTIONS = ("dynamic", "static", "dragin", "question", "none")
HEAD_GUIDED = ("dynamic", "static", "dragin")
POLICIES = ("question-matched", "random-retriever")
"""Selections answered outside the retrieval loop at the budget of a head-guided selection on the same
question (its ``matched_to``): as many retrievals and documents, with the question as the query
(question-matched) or documents drawn at random from the collection (random-retriever, the negative
control)."""
