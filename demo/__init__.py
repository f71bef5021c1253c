"""The ``make demo`` stack: a synthetic clinic target database and the orchestrator that runs phigate on it.

Nothing in this package is imported by the product's request paths; ``seed_demo`` only reads
``demo.clinic.PHI_TAGS`` so that the demo's tags and its data are defined in one place.
"""
