"""Commands: describe."""

COMMANDS: list = []
