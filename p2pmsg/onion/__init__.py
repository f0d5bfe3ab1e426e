"""Onion routing: the Sphinx packet format, its wide-block cipher and replay tags."""
