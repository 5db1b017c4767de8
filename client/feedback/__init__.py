"""The site's feedback store: every finding fracfl showed and every verdict a radiologist gave on it."""
