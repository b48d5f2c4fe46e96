"""The HTTP API: one router module per resource (health, items, search, recommend, events, users, docs)
over dependencies injected with FastAPI's `Depends` (dependencies.py), bodies and limits in schemas.py,
request checks (Host, API key, body size) in guard.py, error replies in errors.py."""
