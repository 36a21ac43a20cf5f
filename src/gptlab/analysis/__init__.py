"""Analyses of runs, vocabularies and models."""
