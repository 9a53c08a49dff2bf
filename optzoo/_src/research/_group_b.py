"""Re-exports of Entropy-SGD, Replicated-SGD, SVI, SCL, GradInit, GradMax, WeightNorm."""
__all__ = []
