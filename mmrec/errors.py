"""Errors a user can cause (bad file, unknown dataset, bad option): the CLI prints them as one line."""


class UserError(Exception):
    """A problem with the user's input or environment, reported without a traceback."""
