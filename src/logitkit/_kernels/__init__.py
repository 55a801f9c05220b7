"""Fused CPU kernels for NumPy input (numba), chosen automatically when they apply.

Each ``*_fast`` entry point returns ``None`` when the fast path does not apply to its arguments (a
backend other than NumPy, an unsupported dtype or option, numba missing, or the fast path turned
off), and the caller then takes the generic array-API path, which computes the same values.
"""
