"""One module per bench item."""
