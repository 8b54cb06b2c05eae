"""Sightline agent package."""
