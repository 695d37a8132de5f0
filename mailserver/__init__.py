"""pymaild: a complete self-hosted mail server in one Python daemon."""

__version__ = "0.1.0"
