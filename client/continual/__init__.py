"""Continuous learning at the site: verdicts into a versioned training pool, held-out patients, replay."""
