"""`fracfl review`: the site's web page where radiologists confirm, reject, correct and add fracfl's findings."""
