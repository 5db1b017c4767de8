"""fracfl common package."""
