"""SQLite state store with numbered, forward-only migrations."""
