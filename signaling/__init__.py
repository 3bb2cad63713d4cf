"""Consilium signalling: identity, policy, rooms, lobby, revocation, audit, REST and WebSocket."""
