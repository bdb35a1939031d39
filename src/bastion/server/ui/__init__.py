"""The web dashboard: server-rendered pages over the API's sessions, services and RBAC."""
