"""babelheads: find and test the attention heads that retrieve from long contexts, across languages."""

from babelheads.errors import BabelheadsError
from babelheads.heads import HeadAddress, HeadLayout

__all__ = ["BabelheadsError", "HeadAddress", "HeadLayout"]
__version__ = "0.1.0"
