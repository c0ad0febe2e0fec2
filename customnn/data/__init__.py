"""Data: the data directory and downloads (``cache``), MNIST IDX files (``mnist``), text corpora
(``text``), their tokenizers (``tokenizer``; byte-level BPE in ``bpe``) and token caches (``tokens``)."""
