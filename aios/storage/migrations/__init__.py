"""Alembic migrations of the one database (aios.storage), from the first schema on:
`Database.open` upgrades a database to the newest revision, and stamps one made before
migrations existed (by `create_all`) as the first revision first."""
