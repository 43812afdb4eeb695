"""Data: HMDB51 index and splits, download, synthetic data, decoding, the cache, clip datasets."""
