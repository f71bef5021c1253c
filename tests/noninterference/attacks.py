"""The concrete attacks of issue 12, as a fixed seed set the oracle runs before the generated statements.

Each is (statement, fresh session?): statements that change session state run on a connection of their own.
Literal guesses are real values of the base (patient 1's name and MRN), so the pseudonym oracle can hit.
"""

from __future__ import annotations

from tests.noninterference.grammar import BASE_MRNS, BASE_NAMES


def _q(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


NAME_1, MRN_1 = BASE_NAMES[0], BASE_MRNS[0]

DECODERS = [
    # Counts and set-returning functions as decoders.
    "SELECT p.id, count(nullif(ascii(substr(p.ssn,1,1)) >= g, false)), count(nullif(ascii(substr(p.ssn,2,1)) >= g, "
    "false)), count(nullif(ascii(substr(p.full_name,1,1)) >= g, false)) FROM patients p CROSS JOIN "
    "generate_series(1,127) g WHERE p.id <= 3 GROUP BY p.id ORDER BY p.id",
    "SELECT p.id FROM patients p, generate_series(1, ascii(substr(p.ssn,5,1))) g WHERE p.id = 1",
    "SELECT p.id, (SELECT count(*) FROM regexp_matches(p.ssn, '9', 'g')) FROM patients p ORDER BY p.id",
    "SELECT p.id, (SELECT count(*) FROM unnest(string_to_array(p.ssn, '9'))) FROM patients p ORDER BY p.id",
    "SELECT p.id, unnest(string_to_array(p.full_name, 'a')) FROM patients p WHERE p.id <= 3 ORDER BY p.id",
    "SELECT p.id, regexp_split_to_table(p.notes, ' ') FROM encounters p WHERE p.id <= 2 ORDER BY p.id",
    "SELECT count(*) FROM patients p, regexp_matches(p.mrn, '[0-4]', 'g') m",
    # Errors as an oracle without CASE.
    "SELECT 1 / (ascii(p.ssn) - 57) FROM patients p",
    "SELECT substr(p.ssn, 1, 1)::int FROM patients p WHERE p.id = 1",
    "SELECT p.id, 1 / (ascii(substr(p.full_name, 1, 1)) - 74) FROM patients p WHERE p.id = 1",
    # EXPLAIN.
    "EXPLAIN (ANALYZE false, ANALYZE true) SELECT 1 FROM patients WHERE id = 1 AND ascii(ssn) >= 57",
    "EXPLAIN (ANALYZE, COSTS off, TIMING off, SUMMARY off) SELECT 1 FROM patients WHERE id = 1 AND ascii(ssn) >= 53",
    "EXPLAIN (ANALYZE, COSTS off, TIMING off, SUMMARY off) SELECT 1 FROM patients WHERE id = 1 AND ascii(ssn) >= 58",
    "EXPLAIN (FORMAT json) SELECT * FROM patients WHERE ssn < '5'",
    "EXPLAIN SELECT * FROM patients WHERE full_name = " + _q(NAME_1),
    # Pseudonym oracle: a computed value hashed with the name column's key, checked against real pseudonyms.
    f"SELECT p.id, p.full_name, CASE WHEN p.id < 0 THEN p.full_name ELSE {_q(NAME_1)} END FROM patients p "
    "WHERE p.id <= 3 ORDER BY p.id",
    f"SELECT p.mrn, CASE WHEN p.id < 0 THEN p.mrn ELSE {_q(MRN_1)} END FROM patients p WHERE p.id = 1",
    f"SELECT p.full_name, coalesce(NULL, {_q(NAME_1)}) FROM patients p WHERE p.id = 1",
    f"SELECT full_name FROM patients WHERE id = 1 UNION SELECT {_q(NAME_1)}",
    # Filters, joins, grouping, windows, LIMIT and recursion on PHI.
    "SELECT id FROM patients WHERE ascii(ssn) > 52 ORDER BY id",
    f"SELECT id FROM patients WHERE full_name = {_q(NAME_1)}",
    "SELECT count(*) FROM patients p JOIN encounters e ON e.notes LIKE '%' || p.full_name || '%'",
    "SELECT zip, count(*) FROM patients GROUP BY zip ORDER BY 2, 1",
    "SELECT id, row_number() OVER (ORDER BY ssn) FROM patients ORDER BY id",
    "SELECT id FROM patients ORDER BY id LIMIT (SELECT ascii(substr(ssn, 2, 1)) - 48 FROM patients WHERE id = 1)",
    "WITH RECURSIVE r(n, s) AS (SELECT 1, ssn FROM patients WHERE id = 1 UNION ALL SELECT n + 1, substr(s, 2) "
    "FROM r WHERE ascii(s) <> 45) SELECT max(n) FROM r",
    "SELECT DISTINCT substr(ssn, 1, 2) FROM patients",
    "SELECT greatest(ssn, '95') FROM patients WHERE id = 1",
    "SELECT nullif(substr(ssn, 1, 1), '9') FROM patients WHERE id = 1",
    "SELECT count(nullif(substr(phone, 1, 1), '2')) FROM patients",
    "SELECT extract(month FROM date_of_birth)::int FROM patients WHERE id = 1",
    "SELECT date_of_birth + 1 FROM patients WHERE id = 1",
    "SELECT md5(ssn) FROM patients WHERE id = 1",
    "SELECT length(notes) FROM encounters WHERE id = 1",
    "VALUES ((SELECT ascii(ssn) FROM patients WHERE id = 1))",
    "TABLE patients",
    # Value-exposing functions by another name (own session only: other sessions are not twins).
    "SELECT state, query FROM pg_stat_get_activity(pg_backend_pid())",
    # Missing column on a PHI table (should be 42703, not a ticket; either way the same on every twin).
    "SELECT no_such_column FROM patients",
    # Catalog introspection.
    "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = 'public' ORDER BY 1, 2",
    # Found by the 50,000-statement run: a guess beside real values in one column shared their pseudonym key.
    f"SELECT v1.t FROM (VALUES (1, {_q(NAME_1)}), (2, 'x')) v1(n, t) UNION ALL SELECT p2.full_name FROM patients p2",
    f"SELECT p1.id, p1.full_name FROM patients p1 UNION ALL SELECT v3.n, v3.t FROM (VALUES (1, {_q(NAME_1)})) v3(n, t)",
]

# Statements that change the session: each runs on a connection of its own.
SESSION_ATTACKS = [
    "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
    "BEGIN READ WRITE",
    "SELECT lo_create(0)",
]

SEEDS: list[tuple[str, bool]] = [(sql, False) for sql in DECODERS] + [(sql, True) for sql in SESSION_ATTACKS]
