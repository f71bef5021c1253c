"""The gateway process: the only holder of the read-only credential; runs the policy pipeline for every front."""
