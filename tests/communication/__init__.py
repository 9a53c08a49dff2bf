"""Tests of optzoo/_src/communication/, and real multi-process runs."""
