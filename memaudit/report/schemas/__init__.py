"""JSON Schemas of memaudit outputs, versioned by major version."""
