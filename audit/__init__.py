"""The audit trail: one append-only record of every access, tied to the human (and agent) behind it."""
