"""The SQL store: engine and sessions, ORM models, migrations and repository functions."""
