"""fracfl server package."""
