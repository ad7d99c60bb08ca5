"""Commands: pipeline."""

COMMANDS: list = []
