"""Building blocks shared by the towers and the fusion: attention, RoPE, norms, embeddings."""
