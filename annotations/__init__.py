"""Shared annotations and chat of a room: the wire schema (`messages`), the ordering authority
(`authority`, sans-IO), the encrypted log (`log`), and `room`, which drives them for the SFU."""
