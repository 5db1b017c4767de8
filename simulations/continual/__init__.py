"""Continuous learning in simulation: periods of arrivals, simulated review, pool, round and gate (issue 17)."""
