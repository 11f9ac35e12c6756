"""Stage 7: the HTTP surface."""
