"""What may run and what is masked: data sources, PHI tags, statement classification, masking."""
