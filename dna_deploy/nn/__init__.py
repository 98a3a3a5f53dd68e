"""PyTorch modules: the layer zoo, the standalone network builder and the block supernets."""
