"""mta-engine: outbound mail delivery engine."""
__version__ = "0.1.0"
