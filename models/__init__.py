"""Shipped weights, installed as package data of ``vaecodec.models`` (see weights.py)."""
