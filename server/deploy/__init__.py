"""Flower deployment helpers: TLS material for the SuperLink and authentication keys for SuperNodes."""
