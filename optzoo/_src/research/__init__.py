"""Research methods, one module per paper; the public surface is :mod:`optzoo.research`."""
