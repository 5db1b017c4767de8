"""fracfl's Hydra configuration groups, shipped as package data so a non-editable install (`pip install .`) finds them."""
