"""The HTTP edge of a node: the aiohttp app, its routes, the signalling WebSocket and the door."""
