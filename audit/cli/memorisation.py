"""Commands: memorisation."""

COMMANDS: list = []
