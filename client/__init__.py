"""fracfl client package."""
