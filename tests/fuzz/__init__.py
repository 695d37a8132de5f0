"""Fuzzing of the parsers and protocol cores (see README.md in this folder).

``checks`` holds one invariant checker per target (shared by the hypothesis property tests
and the coverage-guided harness), ``grammar`` the hypothesis strategies that build valid
inputs and mutate them, ``run`` the long-run command line.
"""
