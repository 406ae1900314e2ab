"""ckptd: a supervisor daemon for training jobs."""

__version__ = "0.1.0"
