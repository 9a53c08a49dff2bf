"""Tests of optzoo/_src/diagnostics/."""
