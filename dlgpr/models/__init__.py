"""Plain ``nn.Module`` models (no Lightning): they return embeddings or logits, never a loss."""
