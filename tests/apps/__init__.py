"""Tests of optzoo/apps/ (command line, race) and of the colabs/ notebooks."""
