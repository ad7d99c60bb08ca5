"""Commands: bias."""

COMMANDS: list = []
