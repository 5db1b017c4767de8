"""fracfl simulations package."""
