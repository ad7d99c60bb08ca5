"""Commands: workspace."""

COMMANDS: list = []
