"""Consilium recorder: encrypted archives of forwarded media and annotations (see issue 7)."""
