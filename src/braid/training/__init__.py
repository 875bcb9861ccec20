"""Training: the runtime every training command runs on (`runtime`, `flags`), and small-LM
training on offline corpora (corpus, tokenizer, `braid train-lm`)."""
