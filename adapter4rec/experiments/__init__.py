"""Experiments over runs: sweeps of methods over a target (``sweep``), the demo (``demo``), and the
table and plot of finished runs (``report``)."""
