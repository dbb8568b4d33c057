"""Datasets: the user formats we accept, their validation, and the canonical format later steps read."""
