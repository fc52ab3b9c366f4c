"""The methods, one folder each, and the registry that maps their names to them (domix.methods.registry)."""
