"""The Campaign writer: applies campaign-side ApplyCommands to the Campaign PostgreSQL database."""
