"""The automatic fit: the whitened family ladder, its stages and the verdict."""
