"""Simulation: demand traces, simulated cloud and spot market, traffic replay and backtests."""
