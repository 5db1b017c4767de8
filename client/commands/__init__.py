"""Site-side `fracfl` subcommands."""
