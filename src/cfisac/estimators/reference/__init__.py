"""The first, scene-at-a-time NumPy / SciPy implementations of the classical baselines.

Kept as literal references for the batched PyTorch estimators of :mod:`cfisac.estimators` (the tests compare the
two on fixed scenes) and registered as ``"<name>-reference"``.
"""
