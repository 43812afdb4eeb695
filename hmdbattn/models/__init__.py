"""Models: the R(2+1)D trunk, the Perceiver head and the classifier that joins them."""
