"""Runtime stage: the streaming pipeline (encode, compress, prefill one 2-second chunk at a time;
then the question; then greedy decode)."""
