"""Implementation of :mod:`logitkit.losses`, one idea per module."""
