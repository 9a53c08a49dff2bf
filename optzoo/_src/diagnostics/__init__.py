"""Diagnostics implementation modules; the public surface is :mod:`optzoo.diagnostics`."""
