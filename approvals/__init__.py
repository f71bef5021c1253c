"""Tickets for held statements, human reviews, and their exactly-once execution by the executor."""
