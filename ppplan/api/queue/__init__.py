"""Asynchronous plan jobs: records in the store (``records``), the job body (``execute``), and the two
ways to run them: the server's thread pool on SQLite (``local``), procrastinate on PostgreSQL (``pg``)."""
