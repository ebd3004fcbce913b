"""Other generative families for comparison: the Gaussian VAE and normalising flows (monograph §1, §2.1, §5.1-5.2)."""
