"""Reports: text summaries and (later) figures, from run tables only."""
