"""Tests of optzoo/_src/cpu_kernels/."""
