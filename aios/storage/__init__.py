"""Storage: the one database (aios.storage.db), its models, the syscall journal, and the
per-agent file space. SQLite by default, PostgreSQL by URL."""
from aios.storage.db import Database
from aios.storage.files import FileStore
from aios.storage.journal import Interrupted, Journal

__all__ = ["Database", "FileStore", "Interrupted", "Journal"]
