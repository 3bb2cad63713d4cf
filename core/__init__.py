"""The leaf layer: what every part of Consilium may import; it imports nothing of ours."""

__version__ = "0.1.0"
