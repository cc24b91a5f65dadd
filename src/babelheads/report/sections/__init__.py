"""The report's sections, one module per kind of run (or family of kinds), each registering itself in
:data:`babelheads.report.base.SECTIONS`. The page draws them in the order imported here; a new
capability's section registers the same way from its own module."""

# isort: off
from babelheads.report.sections import claims, detect, compare, ablate, language, dynamic, rag, compress  # noqa: F401
# isort: on
