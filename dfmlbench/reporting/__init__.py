"""Reports: tables and figures regenerated from run records."""
