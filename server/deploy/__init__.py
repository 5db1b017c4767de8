"""Flower deployment helpers: TLS material, SuperNode and publisher keys, and the mTLS control proxy."""
