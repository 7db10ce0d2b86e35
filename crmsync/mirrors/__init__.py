"""The wizard's mirror tables: their schema documents (schema.py) and their data (data.py), shared by the
wizard that creates them, the mirror service that keeps them current, change capture and the pollers."""
