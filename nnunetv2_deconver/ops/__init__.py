"""The math: the NDC update with its autograd paths and dispatch, and DTC. Depends on torch only."""
