"""Constants shared across layers (kept here, at the bottom, so no layer imports another for them)."""

# Label of a position that carries no loss: `cross_entropy(ignore_index=IGNORE)`, masks, packing.
IGNORE = -100
