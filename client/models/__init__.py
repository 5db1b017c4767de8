"""The site's model store: published versions fetched or delivered, the champion/challenger gate, signed approval
records, and which version is the site's clinical model (current.json). See docs/continuous-learning.md."""
