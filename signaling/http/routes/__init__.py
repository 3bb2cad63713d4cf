"""One module per API: module-level handlers over the node (`signaling.http.node.NODE`)."""
