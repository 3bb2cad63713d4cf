"""Shared state: rooms, participants, lobby, revocations, and events between nodes.

By job: `records` (the records, pure), `revocations` (the local copy and the journal), `store`
(the `StateStore` interface), `memory` (one process) and `redis` (several nodes), `opening`
(which of the two a node uses).
"""
