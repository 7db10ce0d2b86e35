"""Mirror tables (created by the wizard) kept current in both directions; see service.py."""
