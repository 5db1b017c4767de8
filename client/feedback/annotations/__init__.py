"""Radiologists' annotations sent from the PACS (GSPS, measurement SRs, Key Object Selections) turned into verdicts
in the site's feedback store: parsers per object kind, the geometry that matches outlines to fracfl's boxes, and
`apply.PacsFeedback`, which the listener calls for every annotation object it receives."""
