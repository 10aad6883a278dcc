"""zipgate: an HTTP gateway that purifies images with ZIP before a black-box vendor model."""

__version__ = "0.1.0"
