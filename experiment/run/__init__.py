"""A run from its plan: servers, services and containers, the load generators, the sweeps, the result
folder."""
