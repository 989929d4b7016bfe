"""dialguard: a dial-time compliance gate for outbound calls on Asterisk."""

__version__ = "0.1.0"
