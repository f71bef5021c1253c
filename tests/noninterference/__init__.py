"""Noninterference harness (issue 12): twins of the clinic database, a query grammar and an oracle.

A PHI value may influence only its own output column, and only through that column's mask. The harness builds
"twin" databases that agree with a base database on everything an agent's masks reveal and differ in every
hidden character (``twins``), serves base and twins through one real gateway process (``serving``), generates
SELECT-shaped statements from a grammar of positions and functions (``grammar``, plus the issue's concrete
attacks in ``attacks``), and checks that every statement gets the same answer on base and twins over the HTTP
API and the wire, up to a consistent renaming of pseudonyms (``oracle``).
"""
