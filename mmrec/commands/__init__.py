"""CLI subcommands, one module each (see mmrec.cli.COMMANDS)."""
