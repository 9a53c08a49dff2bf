"""Performance helpers (issue 7): leaf grouping for fast compiles, low-precision state."""
__all__ = []
