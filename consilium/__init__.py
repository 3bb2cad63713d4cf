"""The `consilium` command and the composition root that wires a node."""
