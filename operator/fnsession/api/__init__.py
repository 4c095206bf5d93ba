"""The ``fnsession.dev/v1alpha1`` API: models of Function and FunctionSession, their validation
rules, and the CRDs generated from them. Imports nothing else of fnsession (the bottom layer)."""
