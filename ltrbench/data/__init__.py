"""Data: the dataset record every plugin returns, split lists, the text corpus, samplers, transforms."""
