"""The engine's contract with its clients: the request schema, per-frame schedules and the errors
it reports. Plain Python and pydantic, no torch: the API layer and the tests import it cheaply."""
