"""Data sets: scikit-learn's digits, seeded synthetic tensors, image folders.

Import ``bitmesh.data.datasets`` directly (it imports torch); this package
imports nothing heavy.
"""
