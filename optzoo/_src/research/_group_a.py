"""Re-exports of KOALA, NSGD, WRS/sphere, MBF (filled in by their modules)."""
__all__ = []
