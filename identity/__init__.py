"""Who is acting: humans with roles, agents that act on behalf of exactly one human, and their tokens."""
