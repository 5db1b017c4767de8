"""Differential privacy shared by sites and server: DP-SGD training hook, accounting, and the hash-chained ledger."""
