"""`braid bench`: braid's methods against `transformers` on the same weights, in one process."""
