"""Schedules (issue 3)."""
__all__ = []
