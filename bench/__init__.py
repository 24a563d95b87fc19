"""
tunnelgw's benchmark suite: tunnelgw and websockify side by side on the same
loopback backends, driven by the same load client.  Run ``python -m bench``
(or ``--quick``) from the repository root; see docs/benchmarks.rst.
"""
