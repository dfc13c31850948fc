"""Errors the engine raises for requests it will not run."""


class InvalidRequestError(ValueError):
    """A request the engine refuses, naming the offending field.

    The gateway maps this onto an OpenAI-style 400 body with ``param`` set to ``field``.
    """

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field
        self.message = message
