"""Benchmarks of segway-sign against the C tools and the physical limits (run them with ``python -m``)."""
