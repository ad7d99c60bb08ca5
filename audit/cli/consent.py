"""Commands: consent."""

COMMANDS: list = []
