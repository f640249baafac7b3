"""Errors raised by CREward. Every message names the file or input and what was expected."""


class CREwardError(Exception):
    """Base class of every error CREward raises on purpose (bad input, bad weights)."""


class WeightsError(CREwardError):
    """A weight file is missing, unreadable, or does not fit the model."""


class ImageError(CREwardError):
    """An image cannot be read or has an unsupported format.

    For a file, ``path`` is the file and ``reason`` what is wrong with it; the message reads
    ``"<path>: <reason>"``.
    """

    def __init__(self, reason: str, path=None):
        self.reason = reason
        self.path = None if path is None else str(path)
        super().__init__(reason if path is None else f"{path}: {reason}")


class MissingDependencyError(CREwardError):
    """An optional package is needed for this feature; the message gives the pip command."""

    def __init__(self, package: str, feature: str, pip_name: str | None = None):
        self.package = package
        super().__init__(
            f"{feature} needs the optional package '{package}', which is not installed. "
            f"Install it with: pip install {pip_name or package}"
        )
