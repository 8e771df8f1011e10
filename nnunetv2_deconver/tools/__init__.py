"""The tools: the command line, the comparison with stock nnU-Net, metrics, the demo, synthetic data and
the DTC displacement picture."""
