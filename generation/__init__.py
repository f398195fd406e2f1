"""Identity-gated generation and identity-safe enhancement."""
