"""domix's version, as the installed package's metadata gives it: written once, in pyproject.toml."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("domix")
except PackageNotFoundError:  # a source tree put on the path without installing it
    __version__ = "0+unknown"
