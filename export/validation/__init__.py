"""Stage 4: comparison with the PyTorch reference, drift metrics and gates, reports."""
