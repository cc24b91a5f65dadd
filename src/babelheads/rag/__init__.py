"""Retrieval-augmented generation guided by attention heads: the document collection and its BM25
index, the trigger and query pieces, and the DRAGIN-style loop."""
