"""The only code that talks to the API server (kubernetes_asyncio): clients, patches, pods, events."""
