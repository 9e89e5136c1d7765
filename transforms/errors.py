"""Errors that stop a run before it starts, with a message that says what to fix."""


class QdedupError(Exception):
    """A problem with the input, the configuration or the model that the user must fix."""
