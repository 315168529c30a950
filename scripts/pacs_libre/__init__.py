"""pacs-libre: the Python side of the distribution (CLI ``pacsctl``)."""

from importlib.metadata import version

# The version is written once, in pyproject.toml; the installed package's metadata carries it.
__version__ = version("pacs-libre")
