"""Project errors: each message names the bad input and how to fix it. The CLI prints them in one line."""


class VlfssError(Exception):
    """Base class for errors caused by user input or the environment (exit code 2 in the CLI)."""


class ConfigError(VlfssError):
    """A config file or override is invalid."""


class InputError(VlfssError):
    """An image, mask, prompt or argument is invalid."""


class ModelError(VlfssError):
    """A model name is unknown or its weights cannot be loaded."""


class DataError(VlfssError):
    """A dataset folder is missing or has the wrong layout."""
