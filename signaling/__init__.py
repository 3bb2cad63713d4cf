"""Consilium signalling: identity, policy, rooms, lobby, revocation, audit and the REST/WebSocket API."""
