"""Certified Lipschitz bounds and averagedness of networks."""
