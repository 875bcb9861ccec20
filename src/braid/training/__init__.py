"""Small-LM training on offline corpora: corpus, tokenizer, `braid train-lm`."""
