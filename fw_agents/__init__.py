"""fw-agents: fast weights (Ba, Hinton et al., NIPS 2016) as memory cores for RL agents."""

__version__ = "0.1.0"
