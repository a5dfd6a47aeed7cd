"""Analyses of the IR: the time partition (which values depend on the state)."""
