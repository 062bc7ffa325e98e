"""Experiments: turning a recipe into a run folder with proof (and, later, searches and reproductions)."""
