"""Provably convergent reconstruction: PnP-FBS, PnP-DRS/ADMM, RED, TV, tuning."""
