"""pacs-libre: the Python side of the distribution (CLI ``pacsctl``)."""

__version__ = "0.1.0"
