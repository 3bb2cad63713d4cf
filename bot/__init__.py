"""`consilium bot` and the aiortc participant the tests use: headless clients over the protocol."""
