"""The two models, built only from ``customnn.ops``: ``cnn.CustomCNN`` (MNIST) and ``gpt.GPT`` (text)."""
