"""Shared annotations and chat of a room: the wire schema, the ordering authority, the log."""
