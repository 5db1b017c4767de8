"""`fracfl` subcommands provided by the server package (registered through the `fracfl.commands` entry points)."""
