"""Tests of optzoo/_src/wrappers/."""
