"""Commands: diffusion."""

COMMANDS: list = []
