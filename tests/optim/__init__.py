"""Tests of the solvers (lipden/optim): methods, runner, Anderson acceleration, reconstruct, TV."""
