"""ckptd's benchmark suite; run it with ``python -m bench``."""
