"""Consilium selective forwarding unit (built on aiortc; see issue 4)."""
