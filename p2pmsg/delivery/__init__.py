"""Delivery: what travels between nodes above the secure link, and retries."""
