"""The kopf operator: thin handlers (handlers.py) over the session service (service.py)."""
