"""Tasks' raw material: languages, corpora and needles (all data), and the NIAH task builder."""
