"""The session gateway (FC-compatible REST API and data plane). Work in progress: so far the FC error
catalogue and the verification of FC's ACS3-HMAC-SHA256 request signatures."""
