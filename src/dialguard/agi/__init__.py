"""Asterisk Gateway Interface: the wire protocol (sans-I/O) and its adapters."""
