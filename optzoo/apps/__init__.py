"""The demo applications: the `optzoo` command line, the optimizer race and the bundled datasets."""
