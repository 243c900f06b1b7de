"""Datasets: the MUSDB18-HQ folder layout, and a synthetic generator of songs in that layout."""
