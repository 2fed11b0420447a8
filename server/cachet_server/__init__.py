"""cachet: a gRPC cache-and-coordination service over Redis."""

__version__ = "0.1.0"
