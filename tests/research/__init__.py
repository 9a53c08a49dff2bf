"""Tests of optzoo/_src/research/ (one file per method module)."""
