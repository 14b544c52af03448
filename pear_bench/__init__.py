"""pear-bench: does an SFT method prepare a model for RL?"""

__version__ = "0.1.0"
