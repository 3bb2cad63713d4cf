"""Consilium signalling: identity, policy, rooms, lobby, revocation, audit, REST and WebSocket."""

__version__ = "0.1.0"
