"""Autodiff adapters: the analytic cross-entropy gradient as a torch ``autograd.Function`` and a
``jax.custom_vjp``, keeping O(N) row statistics (never the N×K probabilities) for backward.

The backends are imported only when an adapter is first used.
"""
