import os

# Tests run on CPU with a few host devices available for sharding tests.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
