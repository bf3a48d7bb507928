"""1-Lipschitz building blocks: splines, activations, constrained convolutions."""
