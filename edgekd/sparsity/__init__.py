"""Top-k magnitude sparsity: masks, N:M patterns, the gradual schedule."""
