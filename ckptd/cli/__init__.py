"""The command line: argument parsing and one registry of commands (``ckptd run``, ``status``,
``list`` ...)."""
