"""Serving: the two-stage recommender over the store, the event log, and the HTTP service (routers over injected dependencies)."""
