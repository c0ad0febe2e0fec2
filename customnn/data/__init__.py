"""Data: the data directory and downloads (``cache``), MNIST IDX files (``mnist``), text corpora (``text``)."""
