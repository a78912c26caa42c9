"""Reproductions of Gatys et al.'s experiments; each module's docstring starts with its command."""
