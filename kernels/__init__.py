"""Triton kernels beside their torch references; use them through kernels.dispatch (see README.md)."""
