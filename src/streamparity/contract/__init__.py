"""The contract: its model, loading and validation, the model's I/O checked against it, the shipped contracts."""
