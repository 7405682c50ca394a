"""mftd: a fine-tuning daemon for phones. This package is the daemon core; it never imports torch."""

__version__ = "0.1.0"
