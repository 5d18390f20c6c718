"""Hash probes: the CroVCA HashCoder, its training (on cached views, or with LoRA on images), and
the linear baselines. Loading a probe (``artifact``) needs NumPy only, not torch.
"""
