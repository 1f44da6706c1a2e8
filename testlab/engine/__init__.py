"""The engine daemon: reconciles on start, plans with the pure scheduler, drives hypervisors and agents."""
